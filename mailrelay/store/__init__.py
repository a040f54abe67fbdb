"""The Redis store. For now it holds the Lua scripts (lua/*.lua) and their loader (scripts.py);
the store classes themselves are still in mailrelay/storage.py."""
