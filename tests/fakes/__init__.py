"""Stand-ins for the clouds at their HTTP boundary: moto's own server for AWS, and a small
Compute API fake for GCP. Used by tests and by bench/provision_bench.py."""
