"""Runs AWS's own SAM translator (PyPI aws-sam-translator) over a SAM template.

usage: python sam_translate.py TEMPLATE PARAMS_JSON  -> CloudFormation JSON on stdout

Local CodeUri/ContentUri paths become s3:// URIs first (as `sam package` would do), since
the translator accepts only S3 locations. Used by tests/differential.rs.
"""
import json
import os
import sys

import yaml
from samtranslator.translator.transform import transform

os.environ.setdefault("AWS_DEFAULT_REGION", "ap-northeast-1")


class Loader(yaml.SafeLoader):
    pass


def _short_form(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


Loader.add_multi_constructor("!", _short_form)
# Keep timestamps and the like as the strings they were written as.
Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:timestamp"] for k, v in Loader.yaml_implicit_resolvers.items()
}


class NoManagedPolicies:
    def load(self):
        return {}


def to_s3(uri):
    if isinstance(uri, str) and not uri.startswith("s3://"):
        return "s3://esb-test-bucket/" + uri.strip("/")
    return uri


def main():
    path, params = sys.argv[1], json.loads(sys.argv[2])
    with open(path) as f:
        template = yaml.load(f, Loader=Loader)
    globals_fn = (template.get("Globals") or {}).get("Function") or {}
    if "CodeUri" in globals_fn:
        globals_fn["CodeUri"] = to_s3(globals_fn["CodeUri"])
    for res in template["Resources"].values():
        props = res.get("Properties") or {}
        if res["Type"] == "AWS::Serverless::Function" and "CodeUri" in props:
            props["CodeUri"] = to_s3(props["CodeUri"])
        if res["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = to_s3(props.get("ContentUri"))
    out = transform(template, params, NoManagedPolicies())
    json.dump(out, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    main()
