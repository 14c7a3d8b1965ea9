"""`make bench` and its helpers: for developers, not part of the installed package."""
