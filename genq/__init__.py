"""genq's command line and Python client, a package of its own beside api/ and worker/. It imports
neither Flask nor torch: the API and the workers run as separate processes. `pip install genq` (also
spelled `genq[client]`) installs the client alone: requests and tqdm.

    import genq

    client = genq.Client("http://127.0.0.1:8000", api_key)
    job = client.submit_job("generate", {"model_id": model_id, "count": 1000})
    job = client.wait_job(job["id"], on_update=lambda view: print(view["progress"]))
    client.download(job["artifacts"][0]["url"], Path("grid.png"), job["artifacts"][0]["sha256"])
    batch = client.submit_batch({"template": {...}, "seeds": list(range(100))})
    for done in client.batch_results(batch["id"]):  # each job as soon as it has ended
        ...

Modules: `client` (the HTTP client the commands are built on), `commands` (client commands), `progress`
(what they show while waiting), `admin` (over the database), `embedded`/`processes`/`state`/`detached`
(the supervisor behind `genq up`), `demo`, `extras` (which server extras are installed).
"""

from genq.client import ApiError, WaitTimeout
from genq.client import GenqClient as Client

__all__ = ["ApiError", "Client", "WaitTimeout"]
