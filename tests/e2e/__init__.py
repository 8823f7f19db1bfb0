"""End-to-end tests: real clients through the real proxy against the simulator on loopback."""
