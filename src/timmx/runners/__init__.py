"""Two places to run the same ExportJob: in this process, or in the backend's Docker image."""
