"""Independent ElevenLabs test clients for the recording proxy's test matrix."""
