"""`timmx build`: many models x targets from one file, cached by content, run in parallel.

`spec` reads the build file, `plan` turns it into one ExportJob per model x target, `cache`
keys each job by its content, `manifest` records what was built, `execute` runs the jobs.
"""
