"""Byte layouts of TEE evidence (Intel DCAP quotes, AMD SEV-SNP reports, sim
evidence) and the DER reader they need. Parsing only: no trust decisions here."""
