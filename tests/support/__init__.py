"""Helpers shared by the tests (servers, brokers, builders); fixtures stay in conftest files."""
