"""edgeguard: hide people in camera videos and images before they leave the gateway."""

__version__ = "0.1.0"
