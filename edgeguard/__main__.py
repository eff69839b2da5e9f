from edgeguard.cli import run

run()
