"""One module per resource: jobs, feature sets, schedules, and the operational endpoints."""
