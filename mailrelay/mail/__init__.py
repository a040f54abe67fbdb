"""Pure mail logic with no I/O: message preparation, bounce parsing, DKIM."""
