"""The `genq` command line and Python client, a package of its own beside api/ and worker/: the client
commands (`commands`, on `client.GenqClient`), the admin commands (`admin`), the embedded system that
`genq up` supervises (`embedded`, `processes`, `state`, `detached`) and the demo. It never imports Flask
or torch: the API and the workers run as separate processes.
"""
