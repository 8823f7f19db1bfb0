"""Tests for sessiontap.samples, the ProperDurinClient replicas."""
