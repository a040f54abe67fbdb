"""Protocol engines: the ESMTP server and client, MX routing, socket I/O."""
