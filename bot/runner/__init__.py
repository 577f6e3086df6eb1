"""The notebook test runner; its core is the self-contained ``notebook_tests`` module."""
