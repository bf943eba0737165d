"""The package's botocore data (scripts/botocore_data.py): endpoints resolve exactly as with the
full file, and the slimmed models describe the same operations and shapes."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import botocore
import pytest
from botocore.loaders import Loader, create_loader
from botocore.model import ServiceModel
from botocore.regions import EndpointResolver
from botocore.session import Session

from chalicelib.aws import PACKAGED_SERVICES
from chalicelib.storage.s3 import client_config
from scripts.botocore_data import prune_endpoints, slim_botocore_data, strip_documentation

DATA = Path(botocore.__file__).parent / "data"


def prefixes() -> set[str]:
    loader = create_loader()
    return {loader.load_service_model(s, "service-2")["metadata"]["endpointPrefix"] for s in PACKAGED_SERVICES}


def resolve(resolver: EndpointResolver, *args: object) -> object:
    """What construct_endpoint gives for `args`, an error included."""
    try:
        return resolver.construct_endpoint(*args)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - an error is an outcome to compare too
        return (type(exc).__name__, str(exc))


def test_every_packaged_endpoint_resolves_as_with_the_full_file() -> None:
    full_data = create_loader().load_data("endpoints")
    full = EndpointResolver(full_data, uses_builtin_data=True)
    pruned = EndpointResolver(prune_endpoints(full_data, prefixes()), uses_builtin_data=True)
    compared = 0
    for partition in full_data["partitions"]:
        regions = [*partition["regions"], "aws-global", "us-gov-global", "not-a-region-1"]
        for prefix, region, dualstack, fips in itertools.product(sorted(prefixes()), regions, (False, True), (False, True)):
            args = (prefix, region, partition["partition"], dualstack, fips)
            assert resolve(pruned, *args) == resolve(full, *args), args
            compared += 1
    assert compared > 1000
    assert pruned.get_available_partitions() == full.get_available_partitions()


def test_pruning_keeps_partition_data_and_drops_other_services() -> None:
    full_data = create_loader().load_data("endpoints")
    pruned = prune_endpoints(full_data, {"s3"})
    aws = next(p for p in pruned["partitions"] if p["partition"] == "aws")
    assert set(aws["services"]) == {"s3"}
    assert {k: v for k, v in aws.items() if k != "services"} == \
        {k: v for k, v in full_data["partitions"][0].items() if k != "services"}
    assert len(full_data["partitions"][0]["services"]) > 300  # the input is not changed


def test_documentation_strings_are_emptied_and_a_member_named_documentation_stays() -> None:
    model = {"documentation": "<p>Lists.</p>", "members": {"documentation": {"shape": "S", "documentation": "x"},
                                                            "Name": {"shape": "N", "documentationUrl": "https://x"}}}
    assert strip_documentation(model) == {"documentation": "", "members": {
        "documentation": {"shape": "S", "documentation": ""}, "Name": {"shape": "N", "documentationUrl": ""}}}


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of botocore's data with two services, slimmed as the package is."""
    data = tmp_path_factory.mktemp("data")
    for name in ("endpoints.json", "partitions.json", "sdk-default-configuration.json", "_retry.json"):
        shutil.copy(DATA / name, data / name)
    for service in ("s3", "lambda"):
        shutil.copytree(DATA / service, data / service)
    slim_botocore_data(data)
    return data


def test_slimmed_models_describe_the_same_operations_and_shapes(slimmed: Path) -> None:
    assert not list(slimmed.rglob("*.gz")) and not list(slimmed.rglob("examples-1*"))
    full_loader = create_loader()
    slim_loader = Loader(extra_search_paths=[str(slimmed)], include_default_search_paths=False)
    for service in ("s3", "lambda"):
        full = ServiceModel(full_loader.load_service_model(service, "service-2"), service)
        slim = ServiceModel(slim_loader.load_service_model(service, "service-2"), service)
        assert slim.operation_names == full.operation_names
        for name in full.operation_names:
            f, s = full.operation_model(name), slim.operation_model(name)
            for shape_f, shape_s in ((f.input_shape, s.input_shape), (f.output_shape, s.output_shape)):
                assert (shape_s and dict(shape_s.members).keys()) == (shape_f and dict(shape_f.members).keys())
            assert s.http == f.http and s.documentation == ""


def test_a_client_on_the_slimmed_data_sends_what_one_on_the_full_data_sends(slimmed: Path) -> None:
    sent: list[tuple[str, str, dict[str, str], bytes | None]] = []
    volatile = {"X-Amz-Date", "Authorization", "amz-sdk-invocation-id", "User-Agent"}

    def stop(request, **_):  # type: ignore[no-untyped-def]
        headers = {k: str(v) for k, v in request.headers.items() if k not in volatile}
        body = request.body.read() if hasattr(request.body, "read") else request.body  # a PUT's is a stream
        sent.append((request.method, request.url, headers, body))
        raise RuntimeError("not sent")

    for loader in (Loader(extra_search_paths=[str(slimmed)], include_default_search_paths=False), create_loader()):
        session = Session()
        session.register_component("data_loader", loader)
        client = session.create_client("s3", region_name="eu-west-1", aws_access_key_id="k",
                                       aws_secret_access_key="s", config=client_config())
        client.meta.events.register("before-send.s3", stop)
        for call in (lambda: client.list_objects_v2(Bucket="b", Prefix="users/"),
                     lambda: client.put_object(Bucket="b", Key="users/u/x.md", Body=b"x", IfNoneMatch="*"),
                     lambda: client.delete_objects(Bucket="b", Delete={"Objects": [{"Key": "a"}]})):
            with pytest.raises(RuntimeError, match="not sent"):
                call()
    assert len(sent) == 6 and sent[:3] == sent[3:]
