"""The HTTP face: the REST API, the operators' dashboard, sign-in."""
