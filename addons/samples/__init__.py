"""Sample clients replicating the faulty and the fixed ProperDurinClient, for demos and tests."""
