"""The local stack: moto's server as the AWS endpoint, and the processes `make run` starts."""
