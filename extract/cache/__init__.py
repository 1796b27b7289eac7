"""Features out: resumable shards and the one HDF5 file stage two reads."""
