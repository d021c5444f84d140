"""Job runners: a job's validated params -> engine calls -> stored outputs and a result. No Celery here."""
