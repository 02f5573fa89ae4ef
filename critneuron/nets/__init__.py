"""Networks and data: datasets, architectures, training, auxiliary heads."""
