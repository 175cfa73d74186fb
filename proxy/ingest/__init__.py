"""Reading which runs a write to Lunary named, from its raw bytes, as Lunary reads them. Pure."""
