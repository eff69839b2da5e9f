#!/usr/bin/env bash
# Install edgeguard as a systemd service (what `make install` runs, as root).
#
#   sudo systemd/install.sh
#
# Lays out:
#   /opt/edgeguard/venv                          a venv with this checkout (and the `systemd` extra)
#   /opt/edgeguard/venv/share/edgeguard/models   the model manifests (models/*.yaml)
#   /etc/edgeguard/edgeguard.yaml                the config, only if there is none (never overwritten)
#   /var/lib/edgeguard/{incoming,output,quarantine,failed,processed,work,state,sealed,models}
#   /etc/systemd/system/edgeguard.service        the unit (verified with systemd-analyze)
# and the system user/group `edgeguard`. Safe to run again to upgrade.
#
# Environment:
#   EDGEGUARD_ROOT=DIR   stage everything under DIR instead of / (DESTDIR is accepted too): no user
#                        is created, nothing is chowned, systemctl is not called. For packaging and
#                        tests.
#   EDGEGUARD_SRC=DIR    the checkout to install (default: the one holding this script)
#   PYTHON=PATH          interpreter for the venv (default /usr/bin/python3). It must live outside
#                        /home and /root: the unit's ProtectHome=yes hides those from the daemon.
#   EDGEGUARD_PIP_ARGS   extra `pip install` arguments, e.g. "--no-index --find-links /srv/wheels"
#                        on an offline gateway
#   EDGEGUARD_SKIP_PIP=1 create the venv but do not pip install (tests; packagers installing wheels)
#   EDGEGUARD_EXTRAS     extras besides systemd, e.g. "cluster" for Ray (README, "Running on a cluster")
set -euo pipefail
umask 022 # the venv and manifests must be readable by the service user whatever root's umask is

say() { printf 'edgeguard install: %s\n' "$*"; }
die() {
	printf 'edgeguard install: error: %s\n' "$*" >&2
	exit 1
}

ROOT=${EDGEGUARD_ROOT:-${DESTDIR:-}}
ROOT=${ROOT%/}
SRC=${EDGEGUARD_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PYTHON=${PYTHON:-/usr/bin/python3}
SKIP_PIP=${EDGEGUARD_SKIP_PIP:-0}
EXTRAS=systemd${EDGEGUARD_EXTRAS:+,$EDGEGUARD_EXTRAS}
read -r -a PIP_ARGS <<<"${EDGEGUARD_PIP_ARGS:-}"

NAME=edgeguard
OPT=/opt/edgeguard
VENV=$OPT/venv
MANIFESTS=$VENV/share/edgeguard/models
ETC=/etc/edgeguard
CONFIG=$ETC/edgeguard.yaml
STATE=/var/lib/edgeguard
UNIT=/etc/systemd/system/edgeguard.service

staged() { [ -n "$ROOT" ]; }

# --- checks --------------------------------------------------------------------------------------
if ! staged && [ "$(id -u)" -ne 0 ]; then
	die "run as root (or set EDGEGUARD_ROOT=DIR to stage into DIR)"
fi
[ -f "$SRC/pyproject.toml" ] || die "$SRC is not an edgeguard checkout (no pyproject.toml); set EDGEGUARD_SRC"
[ -f "$SRC/systemd/edgeguard.service" ] || die "$SRC/systemd/edgeguard.service is missing"
[ -f "$SRC/config/edgeguard.yaml" ] || die "$SRC/config/edgeguard.yaml is missing"
compgen -G "$SRC/models/*.yaml" >/dev/null || die "no model manifests in $SRC/models"
[ -x "$PYTHON" ] || die "no Python at $PYTHON (install python3 and python3-venv, or set PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than 3.11"
if [ "$SKIP_PIP" = 1 ]; then need='import venv'; else need='import venv, ensurepip'; fi
"$PYTHON" -c "$need" 2>/dev/null || die "$PYTHON cannot make a venv with pip (apt-get install python3-venv)"
case $("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))') in
/home/* | /root/* | /root)
	why="$PYTHON lives under a home directory, which the unit's ProtectHome=yes hides from the daemon"
	if staged; then say "warning: $why"; else die "$why; use /usr/bin/python3"; fi
	;;
esac

# --- user and group ------------------------------------------------------------------------------
if staged; then
	say "staging into $ROOT: not creating user $NAME, not changing ownership"
elif getent passwd "$NAME" >/dev/null; then
	say "user $NAME exists"
else
	if getent group "$NAME" >/dev/null; then group_opt=(--gid "$NAME"); else group_opt=(--user-group); fi
	useradd --system "${group_opt[@]}" --home-dir "$STATE" --no-create-home \
		--shell /usr/sbin/nologin --comment "edgeguard privacy daemon" "$NAME"
	say "created system user and group $NAME"
fi

# own PATH OWNER:GROUP MODE: mode always, ownership only on a real install.
own() {
	chmod "$3" "$ROOT$1"
	if ! staged; then chown "$2" "$ROOT$1"; fi
}

# --- venv ----------------------------------------------------------------------------------------
install -d -m 0755 "$ROOT$OPT"
if [ "$SKIP_PIP" = 1 ]; then
	[ -x "$ROOT$VENV/bin/python" ] || "$PYTHON" -m venv --without-pip "$ROOT$VENV"
	say "venv at $ROOT$VENV (EDGEGUARD_SKIP_PIP=1: edgeguard not installed into it)"
else
	[ -x "$ROOT$VENV/bin/pip" ] || "$PYTHON" -m venv "$ROOT$VENV"
	say "installing ${SRC}[$EXTRAS] into $ROOT$VENV (systemd-python needs libsystemd-dev, pkg-config, gcc, python3-dev)"
	"$ROOT$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "${PIP_ARGS[@]}" "${SRC}[$EXTRAS]"
	[ -x "$ROOT$VENV/bin/edgeguard" ] || die "pip did not install $ROOT$VENV/bin/edgeguard"
fi

# --- model manifests -----------------------------------------------------------------------------
# The installed package looks for them at sys.prefix/share/edgeguard/models. Replaced as a whole so
# a manifest removed from the checkout does not linger.
install -d -m 0755 "$ROOT$MANIFESTS"
rm -f "$ROOT$MANIFESTS"/*.yaml
install -m 0644 "$SRC"/models/*.yaml "$ROOT$MANIFESTS/"
say "manifests in $ROOT$MANIFESTS: $(cd "$SRC/models" && echo *.yaml)"

# --- config --------------------------------------------------------------------------------------
install -d -m 0750 "$ROOT$ETC"
own "$ETC" root:"$NAME" 0750
if [ -e "$ROOT$CONFIG" ]; then
	say "keeping the existing $ROOT$CONFIG (new default: $SRC/config/edgeguard.yaml)"
else
	# The service runs in /var/lib/edgeguard, so the checkout's relative paths land there; only the
	# drop folder is renamed from the checkout's nextbatchRun/ to incoming/ (made 2770 below).
	awk '
		/^[^[:space:]#]/ { in_paths = ($0 ~ /^paths:/) }
		in_paths && /^[[:space:]]+incoming:/ {
			match($0, /^[[:space:]]+/)
			$0 = substr($0, 1, RLENGTH) "incoming: incoming   # " STATE "/incoming (set by install.sh)"
		}
		{ print }
	' STATE="$STATE" "$SRC/config/edgeguard.yaml" >"$ROOT$CONFIG.new"
	grep -q "^[[:space:]]*incoming: incoming " "$ROOT$CONFIG.new" ||
		say "warning: no paths.incoming in the config; the daemon will use its default drop folder"
	mv "$ROOT$CONFIG.new" "$ROOT$CONFIG"
	own "$CONFIG" root:"$NAME" 0640
	say "installed $ROOT$CONFIG"
fi

# --- state folders -------------------------------------------------------------------------------
# 0750 matches StateDirectoryMode= in the unit. incoming is 2770: group edgeguard may write, and the
# setgid bit gives every uploaded file group edgeguard so the daemon can read it.
install -d -m 0750 "$ROOT$STATE"
own "$STATE" "$NAME:$NAME" 0750
for dir in incoming output quarantine failed processed work state sealed models; do
	install -d "$ROOT$STATE/$dir"
	if [ "$dir" = incoming ]; then mode=2770; else mode=0750; fi
	own "$STATE/$dir" "$NAME:$NAME" "$mode"
done
say "folders in $ROOT$STATE"

# --- unit ----------------------------------------------------------------------------------------
install -d -m 0755 "$ROOT$(dirname "$UNIT")"
install -m 0644 "$SRC/systemd/edgeguard.service" "$ROOT$UNIT"
say "installed $ROOT$UNIT"

if command -v systemd-analyze >/dev/null; then
	if staged; then
		# verify checks that ExecStart= exists, and it only exists under the staging root: check a copy
		# pointing there (the staged edgeguard script, or the venv's python when pip was skipped).
		exe=$ROOT$VENV/bin/edgeguard
		[ -x "$exe" ] || exe=$ROOT$VENV/bin/python
		tmp=$(mktemp -d)
		trap 'rm -rf "$tmp"' EXIT
		sed "s|^ExecStart=$VENV/bin/edgeguard |ExecStart=$exe |" "$ROOT$UNIT" >"$tmp/edgeguard.service"
		systemd-analyze verify "$tmp/edgeguard.service" || die "systemd-analyze verify failed"
	else
		systemd-analyze verify "$UNIT" || die "systemd-analyze verify $UNIT failed"
	fi
	say "systemd-analyze verify: ok"
else
	say "systemd-analyze not found: unit not verified"
fi

if staged; then
	:
elif [ -d /run/systemd/system ]; then # systemd is PID 1 (sd_booted)
	systemctl daemon-reload
	say "systemctl daemon-reload: done"
else
	say "systemd is not running as init here; on the gateway run: systemctl daemon-reload"
fi

cat <<EOF

Next steps:
  1. Review the config:          \$EDITOR $CONFIG
     (relative folders resolve against /var/lib/edgeguard, the service's working directory)
  2. Fetch and verify the model (needs the network; the service itself has none):
       cd $STATE && runuser -u $NAME -- $VENV/bin/edgeguard models fetch -c $CONFIG
  3. Check the machine:          cd $STATE && runuser -u $NAME -- $VENV/bin/edgeguard doctor -c $CONFIG
  4. Let the cameras' uploader write into $STATE/incoming:
       usermod -aG $NAME <uploader-account>      (and give it a umask that keeps files group-readable)
  5. Start it now and at boot:   systemctl enable --now $NAME
     (after an upgrade:          systemctl restart $NAME)
     Watch it:                   systemctl status $NAME; journalctl -u $NAME -f
EOF
