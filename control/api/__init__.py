"""The HTTP API's handlers, one small class per resource, each given only the services it
needs and each listing its own routes (control/http.Route). control/app.py assembles them into
one route table: the router, the policy's action names and the OpenAPI document."""
