"""Every MLflow run matching a filter, page by page: the one pager the orchestrator (which runs of a
sweep are finished, which trials to sample) and the analysis (which runs to load) share.

It takes a client and imports no mlflow, so it lives in core/ where writer and reader both import
it without the orchestrator importing analysis or the other way round.
"""
from __future__ import annotations

PAGE = 1000   # search_runs page size (the server caps pages anyway)


def search_all(client, experiment_id: str, filter_string: str,
               order_by: list[str] | None = None) -> list:
    """All runs of `experiment_id` matching `filter_string` (see core.schema.role_filter), every
    page of `client.search_runs` concatenated in the order the store returns them."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=PAGE,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
