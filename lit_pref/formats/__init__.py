"""The file formats that the methods write and the data modules read: Pick-a-Pic pairs, rich (RPO) pairs and
multi-round dialogues (VCA). A leaf: it imports nothing of lit_pref but :mod:`lit_pref.io`."""
