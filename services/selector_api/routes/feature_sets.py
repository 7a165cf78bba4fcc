"""``/v1/feature-sets``: the registry's versions, promotion and rollback, and the serving route.

``GET /v1/feature-sets/{name}`` is the hot path: the promoted version's body and ETag come from
:class:`~services.selector_api.serving.FeatureSetCache`; ``If-None-Match`` with the current ETag
gets a bodiless 304. Versions are immutable, so ``.../versions/{v}`` is cacheable forever.

Example (with httpx)::

    r = client.get("/v1/feature-sets/ctr-main")               # 200, ETag: "ctr-main-3-..."
    client.get("/v1/feature-sets/ctr-main", headers={"If-None-Match": r.headers["ETag"]})  # 304
    client.post("/v1/feature-sets/ctr-main/promote", json={"version": 2}, headers=auth)
    client.post("/v1/feature-sets/ctr-main/rollback", headers=auth)   # back to 3
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from pipelines.errors import SpecError
from pipelines.spec import FeatureSet
from services.selector_api.deps import JsonBody, ListBudget, NamePath, ServiceDep, check_name, require_api_key
from services.selector_api.errors import NotFound
from services.selector_api.models import (
    FeatureSetList,
    FeatureSetSummary,
    PromoteRequest,
    PromotionEntry,
    PromotionOut,
    VersionList,
    VersionOut,
    error_responses,
    header_doc,
)
from services.selector_api.serving import Served, answer

router = APIRouter(prefix="/v1/feature-sets", tags=["feature-sets"], strict_content_type=False)

# What serving.answer() sends with a version, on the 200 and on the 304.
SERVED_HEADERS = {
    "ETag": header_doc("Strong ETag of the version's body; send it back in If-None-Match to get a 304"),
    "X-Feature-Set-Version": header_doc("The version number in the body", "integer"),
    "Cache-Control": header_doc("`no-cache` for the promoted version (a promotion changes it); "
                                "`public, max-age=31536000, immutable` for a numbered version"),
}
FEATURE_SET_JSON = {200: {"description": "The FeatureSet (JSON, docs/jobspec.md)", "headers": SERVED_HEADERS,
                          "model": FeatureSet},
                    304: {"description": "Not modified: the If-None-Match ETag is current", "headers": SERVED_HEADERS}}
EXPORT = {200: {"description": "TorchRec table configs (JSON) or a Feast FeatureService module (Python)",
                "headers": {"Content-Disposition": header_doc("attachment; filename=NAME-vVERSION.json|.py")},
                "content": {"application/json": {"schema": {"type": "object"}},
                            "text/x-python": {"schema": {"type": "string"}}}}}
Version = Annotated[int, Path(ge=1, le=2**31)]


def _served_response(request: Request, served: Served, cache_control: str) -> Response:
    status, headers, body = answer(served, request.headers.get("if-none-match"), cache_control)
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


def _known(service: ServiceDep, name: str) -> None:
    check_name(name)
    service.store.require_name(name)


MAX_PAGE = 200  # entries per page of the list routes
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Entries per page, at most {MAX_PAGE}")]


@router.get("", response_model=FeatureSetList, responses=error_responses(422, 429), operation_id="listFeatureSets")
def list_feature_sets(service: ServiceDep, charge: ListBudget, limit: PageLimit = 100,
                      after: Annotated[str | None, Query(max_length=128, description=(
                          "Where the page starts: the last name of the previous page"))] = None) -> FeatureSetList:
    """Feature-set names in order, a page at a time, each with its promoted and latest version."""
    names = [n for n in service.store.registry.names() if after is None or n > after]
    page = names[:limit]
    out = []
    for name in page:
        versions = service.store.registry.versions(name)
        promoted = next((v.version for v in versions if v.promoted), None)
        out.append(FeatureSetSummary(name=name, promoted_version=promoted, latest_version=versions[-1].version,
                                     versions=len(versions), href=f"/v1/feature-sets/{name}"))
    charge(len(out))
    more = len(names) > limit
    return FeatureSetList(feature_sets=out, next=f"/v1/feature-sets?{urlencode({'limit': limit, 'after': page[-1]})}"
                          if more else None)


@router.get("/{name}", responses={**error_responses(404, 422), **FEATURE_SET_JSON}, response_class=Response,
            operation_id="getFeatureSet")
async def get_promoted(name: NamePath, request: Request) -> Response:
    """The promoted version (from memory), with ``ETag`` and ``X-Feature-Set-Version``; 304 on a
    matching ``If-None-Match``. Clients revalidate each time (``Cache-Control: no-cache``), since a
    promotion changes the answer. (Cache hits are answered by ``serving.ServePromoted`` before
    routing; this handler answers the rest, the same way.)"""
    cache = request.app.state.service.cache
    served = cache.promoted(name)
    if served is None:
        check_name(name)
        versions = request.app.state.service.store.require_name(name)
        raise NotFound("name", f"feature set {name!r} has no promoted version; versions are "
                       f"{', '.join(str(v.version) for v in versions)} (promote one)")
    return _served_response(request, served, "no-cache")


@router.get("/{name}/versions", response_model=VersionList, responses=error_responses(404, 422, 429),
            operation_id="listFeatureSetVersions")
def list_versions(name: NamePath, service: ServiceDep, charge: ListBudget, limit: PageLimit = 100,
                  after: Annotated[int, Query(ge=0, le=2**31, description=(
                      "Where the page starts: versions after this number (the previous page's last)"))] = 0,
                  ) -> VersionList:
    """Versions oldest first, a page at a time, with their metrics, promotion decision and stability."""
    check_name(name)
    versions = service.store.require_name(name)
    promoted = next((v.version for v in versions if v.promoted), None)
    later = [v for v in versions if v.version > after]
    page = later[:limit]
    charge(len(page))
    more = len(later) > limit
    return VersionList(name=name, promoted_version=promoted, versions=[VersionOut.of(v) for v in page],
                       next=f"/v1/feature-sets/{name}/versions?{urlencode({'limit': limit, 'after': page[-1].version})}"
                       if more else None)


@router.get("/{name}/versions/{version}", responses={**error_responses(404, 422), **FEATURE_SET_JSON},
            response_class=Response, operation_id="getFeatureSetVersion")
def get_version(name: NamePath, version: Version, request: Request, service: ServiceDep) -> Response:
    """One version's FeatureSet; immutable, so cacheable for good."""
    check_name(name)
    service.store.require_name(name)
    try:
        served = service.cache.version(name, version)
    except SpecError as exc:
        raise NotFound(exc.field, exc.message) from None
    return _served_response(request, served, "public, max-age=31536000, immutable")


@router.get("/{name}/versions/{version}/export", responses={**error_responses(404, 422), **EXPORT},
            response_class=Response, operation_id="exportFeatureSetVersion")
def export_version(name: NamePath, version: Version, service: ServiceDep,
                   format: Annotated[Literal["torchrec", "feast"], Query()] = "torchrec") -> Response:
    """The version's TorchRec manifest (JSON: tables with rows, widths and pooling, crosses, dense
    preprocessing; from the artifacts published with it) or its Feast ``FeatureService`` (Python).
    The complete folders are ``seqattn export`` (docs/export.md)."""
    from pipelines.export import export_feature_set, find_artifacts

    check_name(name)
    service.store.require_name(name)
    try:
        fs = service.store.registry.get(name, version)
    except SpecError as exc:
        raise NotFound(exc.field, exc.message) from None
    record = service.store.registry.record(name, version)
    try:
        text = export_feature_set(fs, format, find_artifacts(service.store.registry.home / record.path))
    except SpecError as exc:
        raise NotFound(exc.field, exc.message) from None
    media = "application/json" if format == "torchrec" else "text/x-python"
    filename = f"{name}-v{version}." + ("json" if format == "torchrec" else "py")
    return Response(text, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _promotion(service: ServiceDep, name: str, record_version: int) -> PromotionOut:
    history = [PromotionEntry(**p) for p in service.store.promotions(name)]
    record = service.store.registry.record(name, record_version)
    previous = history[-1].previous_version if history else None
    return PromotionOut(name=name, promoted_version=record.version, previous_version=previous,
                        record=VersionOut.of(record), history=history)


@router.post("/{name}/promote", response_model=PromotionOut,
             responses=error_responses(400, 401, 404, 409, 413, 415, 422, 429),
             dependencies=[Depends(require_api_key)], operation_id="promoteFeatureSet")
async def promote(name: NamePath, body: PromoteRequest, _: JsonBody, service: ServiceDep) -> PromotionOut:
    """Serve ``version`` from now on (atomic: readers see the old or the new version, never a mix).
    ``expected_version`` makes it a compare-and-set (409 if another promotion came first).
    The body is a :class:`PromoteRequest`."""
    return await run_in_threadpool(_promote, service, name, body)


def _promote(service: ServiceDep, name: str, body: PromoteRequest) -> PromotionOut:
    _known(service, name)
    try:
        record = service.store.promote(name, body.version, expected=body.expected_version)
    except SpecError as exc:
        if exc.field == "version":
            raise NotFound(exc.field, exc.message) from None
        raise
    service.cache.invalidate()
    return _promotion(service, name, record.version)


@router.post("/{name}/rollback", response_model=PromotionOut, responses=error_responses(401, 404, 409, 422, 429),
             dependencies=[Depends(require_api_key)], operation_id="rollbackFeatureSet")
def rollback(name: NamePath, service: ServiceDep) -> PromotionOut:
    """Promote again the version that was promoted before the current one."""
    _known(service, name)
    record = service.store.rollback(name)
    service.cache.invalidate()
    return _promotion(service, name, record.version)
