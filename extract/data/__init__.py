"""Images in: datasets as users keep them, decoding, and the views the weights define."""
