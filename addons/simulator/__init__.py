"""The built-in ElevenLabs simulator: agent brain (`agent`) and loopback server (`server`)."""
