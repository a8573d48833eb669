#!/usr/bin/env python3
"""Renders a crate's public API from rustdoc's JSON output, one item per line.

Usage: public_api.py CRATE.json > api.txt

Every item reachable from the crate root under its public path (re-exports
are followed, globs expanded), with its signature: functions and methods
with their arguments and return type, struct fields, enum variants, trait
items, constants' and aliases' types, and the traits each type implements
(auto traits included, blanket implementations left out). Lines are sorted,
so a diff against the checked-in file shows exactly what changed. Written
against rustdoc's JSON format version 57 (nightly, 2026); it refuses a
format outside 50..70 and stops, naming it, at any kind of item, type or
bound it does not know, rather than leave it out. Not listed: items
marked #[doc(hidden)], constants' values, and the version of a
re-exported crate (its `pub use` line is listed; Cargo.lock has the
version).
"""

import json
import sys

KNOWN_FORMATS = range(50, 70)
# The auto traits an embedder relies on (Freeze and the unwind markers are
# left out: they follow from the others or are not stable).
AUTO_TRAITS = {"Send", "Sync", "Unpin"}
# Compiler markers that follow from a derive and are not API.
UNSTABLE_MARKERS = {"StructuralPartialEq"}


class Api:
    def __init__(self, doc):
        if doc["format_version"] not in KNOWN_FORMATS:
            sys.exit(f"public_api.py: rustdoc JSON format {doc['format_version']} is unknown; update the script")
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.crate = self.index[str(doc["root"])]["name"]
        self.lines = set()
        self.seen = set()

    def item(self, id_):
        return self.index.get(str(id_))

    # -- types -----------------------------------------------------------

    def ty(self, t):
        if t is None:
            return "()"
        (kind, v), = t.items()
        if kind == "resolved_path":
            return self.path(v)
        if kind == "primitive":
            return v
        if kind == "generic":
            return v
        if kind == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        if kind == "slice":
            return "[" + self.ty(v) + "]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "borrowed_ref":
            lt = v["lifetime"] + " " if v.get("lifetime") else ""
            mut = "mut " if v["is_mutable"] else ""
            return f"&{lt}{mut}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return ("*mut " if v["is_mutable"] else "*const ") + self.ty(v["type"])
        if kind == "dyn_trait":
            parts = [self.poly_trait(p) for p in v["traits"]]
            if v.get("lifetime"):
                parts.append(v["lifetime"])
            return "dyn " + " + ".join(parts)
        if kind == "impl_trait":
            return "impl " + " + ".join(self.bound(b) for b in v)
        if kind == "function_pointer":
            sig = v["sig"]
            args = ", ".join(self.ty(a[1]) for a in sig["inputs"])
            out = sig.get("output")
            return f"fn({args})" + (f" -> {self.ty(out)}" if out else "")
        if kind == "qualified_path":
            trait = v.get("trait")
            tr = f" as {self.path(trait)}" if trait else ""
            return f"<{self.ty(v['self_type'])}{tr}>::{v['name']}"
        if kind == "infer":
            return "_"
        sys.exit(f"public_api.py: unknown type kind {kind}")

    def path(self, p):
        # This crate's items by name alone (how the source spells a path
        # is not API, nor is the private module an item is defined in);
        # other crates' by their full path.
        name = p["path"].split("::")[-1]
        summary = self.paths.get(str(p["id"]))
        if summary and summary["crate_id"] != 0:
            name = "::".join(summary["path"])
        return name + self.args(p.get("args"))

    def args(self, a):
        if not a:
            return ""
        (kind, v), = a.items()
        if kind == "angle_bracketed":
            parts = []
            for g in v["args"]:
                (k, x), = g.items() if isinstance(g, dict) else (("lifetime", g),)
                if k == "type":
                    parts.append(self.ty(x))
                elif k == "lifetime":
                    parts.append(x)
                elif k == "const":
                    parts.append(x.get("expr", "_"))
                else:
                    parts.append("_")
            for c in v.get("constraints", []):
                binding = c["binding"]
                if "equality" in binding:
                    eq = binding["equality"]
                    val = self.ty(eq["type"]) if "type" in eq else str(eq)
                    parts.append(f"{c['name']} = {val}")
                else:
                    parts.append(f"{c['name']}: " + " + ".join(self.bound(b) for b in binding["constraint"]))
            return "<" + ", ".join(parts) + ">" if parts else ""
        if kind == "parenthesized":
            ins = ", ".join(self.ty(x) for x in v["inputs"])
            out = v.get("output")
            return f"({ins})" + (f" -> {self.ty(out)}" if out else "")
        if kind == "return_type_notation":
            return "(..)"
        sys.exit(f"public_api.py: unknown generic args {kind}")

    def poly_trait(self, p):
        hr = ""
        if p.get("generic_params"):
            hr = "for<" + ", ".join(g["name"] for g in p["generic_params"]) + "> "
        return hr + self.path(p["trait"])

    def bound(self, b):
        (kind, v), = b.items()
        if kind == "trait_bound":
            modifier = {"none": "", "maybe": "?", "maybe_const": "~const "}.get(v.get("modifier", "none"), "")
            return modifier + self.poly_trait({"trait": v["trait"], "generic_params": v.get("generic_params")})
        if kind == "outlives":
            return v
        if kind == "use":
            return "use<..>"
        sys.exit(f"public_api.py: unknown bound {kind}")

    def generics(self, g):
        params = []
        for p in g["params"]:
            (kind, v), = p["kind"].items()
            if kind == "lifetime":
                params.append(p["name"] + (": " + " + ".join(v["outlives"]) if v.get("outlives") else ""))
            elif kind == "type":
                if v.get("is_synthetic"):
                    continue
                bounds = " + ".join(self.bound(b) for b in v.get("bounds", []))
                default = f" = {self.ty(v['default'])}" if v.get("default") else ""
                params.append(p["name"] + (f": {bounds}" if bounds else "") + default)
            elif kind == "const":
                params.append(f"const {p['name']}: {self.ty(v['type'])}")
        return "<" + ", ".join(params) + ">" if params else ""

    def where(self, g):
        preds = []
        for w in g.get("where_predicates", []):
            (kind, v), = w.items()
            if kind == "bound_predicate":
                preds.append(f"{self.ty(v['type'])}: " + " + ".join(self.bound(b) for b in v["bounds"]))
            elif kind == "lifetime_predicate":
                preds.append(f"{v['lifetime']}: " + " + ".join(v["outlives"]))
            elif kind == "eq_predicate":
                preds.append(f"{self.ty(v['lhs'])} == ..")
        return " where " + ", ".join(preds) if preds else ""

    def fn_sig(self, name, f):
        h = f["header"]
        quals = "".join(q for q, on in (("const ", h["is_const"]), ("async ", h["is_async"]), ("unsafe ", h["is_unsafe"])) if on)
        args = []
        for arg_name, t in f["sig"]["inputs"]:
            if arg_name == "self":
                r = self.ty(t)
                args.append({"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}.get(r, f"self: {r}"))
            else:
                args.append(f"{arg_name}: {self.ty(t)}")
        out = f["sig"].get("output")
        ret = f" -> {self.ty(out)}" if out else ""
        return f"{quals}fn {name}{self.generics(f['generics'])}({', '.join(args)}){ret}{self.where(f['generics'])}"

    # -- items -----------------------------------------------------------

    def emit(self, line):
        self.lines.add(line)

    def attrs(self, it):
        marks = []
        for a in it.get("attrs", []):
            if a == "non_exhaustive" or (isinstance(a, dict) and "non_exhaustive" in a):
                marks.append("#[non_exhaustive] ")
        return "".join(marks)

    def module(self, it, prefix):
        for child in it["inner"]["module"]["items"]:
            c = self.item(child)
            if c is None:
                continue
            if "use" in c["inner"]:
                self.reexport(c, prefix)
            else:
                self.visit(c, prefix, c["name"])

    def reexport(self, u, prefix):
        use = u["inner"]["use"]
        target = self.item(use["id"]) if use.get("id") is not None else None
        if use["is_glob"]:
            if target and "module" in target["inner"]:
                self.module(target, prefix)
            else:
                self.emit(f"pub use {prefix}::* = {use['source']}::*")
            return
        if target is None:
            self.emit(f"pub use {prefix}::{use['name']} = {use['source']}")
            return
        self.visit(target, prefix, use["name"])

    def visit(self, it, prefix, name):
        if it.get("visibility") != "public" and "variant" not in it["inner"]:
            return
        path = f"{prefix}::{name}"
        key = (it["id"], path)
        if key in self.seen:
            return
        self.seen.add(key)
        (kind, v), = it["inner"].items()
        a = self.attrs(it)
        if kind == "module":
            self.emit(f"pub mod {path}")
            self.module(it, path)
        elif kind == "struct":
            self.emit(f"{a}pub struct {path}{self.generics(v['generics'])}{self.where(v['generics'])}")
            (sk, sv), = v["kind"].items() if isinstance(v["kind"], dict) else (("unit", None),)
            if sk == "plain":
                for fid in sv["fields"]:
                    f = self.item(fid)
                    self.emit(f"pub {path}.{f['name']}: {self.ty(f['inner']['struct_field'])}")
                if sv.get("has_stripped_fields"):
                    self.emit(f"{path}: private fields")
            elif sk == "tuple":
                for i, fid in enumerate(sv):
                    if fid is not None:
                        self.emit(f"pub {path}.{i}: {self.ty(self.item(fid)['inner']['struct_field'])}")
                    else:
                        self.emit(f"{path}.{i}: private")
            self.impls(v["impls"], path, it["name"])
        elif kind == "enum":
            self.emit(f"{a}pub enum {path}{self.generics(v['generics'])}{self.where(v['generics'])}")
            for vid in v["variants"]:
                self.variant(self.item(vid), path)
            self.impls(v["impls"], path, it["name"])
        elif kind == "union":
            self.emit(f"pub union {path}")
            self.impls(v["impls"], path, it["name"])
        elif kind == "function":
            self.emit(f"pub {self.fn_sig(path, v)}")
        elif kind == "trait":
            bounds = " + ".join(self.bound(b) for b in v.get("bounds", []))
            unsafe = "unsafe " if v.get("is_unsafe") else ""
            self.emit(f"pub {unsafe}trait {path}{self.generics(v['generics'])}" + (f": {bounds}" if bounds else ""))
            for iid in v["items"]:
                self.assoc(self.item(iid), path, trait_item=True)
        elif kind == "constant":
            self.emit(f"pub const {path}: {self.ty(v['type'])}")
        elif kind == "static":
            self.emit(f"pub static {path}: {self.ty(v['type'])}")
        elif kind == "type_alias":
            self.emit(f"pub type {path}{self.generics(v['generics'])} = {self.ty(v['type'])}")
        elif kind in ("macro", "proc_macro"):
            self.emit(f"pub macro {path}")
        else:
            sys.exit(f"public_api.py: unknown item kind {kind} at {path}")

    def variant(self, it, enum_path):
        v = it["inner"]["variant"]
        path = f"{enum_path}::{it['name']}"
        (kind, vv), = v["kind"].items() if isinstance(v["kind"], dict) else ((v["kind"], None),)
        if kind == "plain":
            self.emit(f"{self.attrs(it)}{path}")
        elif kind == "tuple":
            tys = [self.ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_" for f in vv]
            self.emit(f"{self.attrs(it)}{path}({', '.join(tys)})")
        elif kind == "struct":
            fields = [self.item(f) for f in vv["fields"]]
            body = ", ".join(f"{f['name']}: {self.ty(f['inner']['struct_field'])}" for f in fields)
            more = ", .." if vv.get("has_stripped_fields") else ""
            self.emit(f"{self.attrs(it)}{path} {{ {body}{more} }}")

    def assoc(self, it, owner, trait_item=False):
        (kind, v), = it["inner"].items()
        if not trait_item and it.get("visibility") != "public":
            return
        if kind == "function":
            provided = " (provided)" if trait_item and v.get("has_body") else ""
            self.emit(f"pub {self.fn_sig(owner + '::' + it['name'], v)}{provided}")
        elif kind == "assoc_const":
            self.emit(f"pub const {owner}::{it['name']}: {self.ty(v['type'])}")
        elif kind == "assoc_type":
            bounds = " + ".join(self.bound(b) for b in v.get("bounds", []))
            self.emit(f"pub type {owner}::{it['name']}{self.generics(v['generics'])}" + (f": {bounds}" if bounds else ""))
        else:
            sys.exit(f"public_api.py: unknown associated item {kind} in {owner}")

    def impls(self, ids, path, own_name):
        for iid in ids:
            imp = self.item(iid)["inner"]["impl"]
            if imp.get("blanket_impl") is not None:
                continue
            if imp.get("trait") is None:
                for aid in imp["items"]:
                    self.assoc(self.item(aid), path)
                continue
            trait_name = imp["trait"]["path"].split("::")[-1]
            if imp.get("is_synthetic") and trait_name not in AUTO_TRAITS:
                continue
            if trait_name in UNSTABLE_MARKERS:
                continue
            neg = "!" if imp.get("is_negative") else ""
            unsafe = "unsafe " if imp.get("is_unsafe") else ""
            gen = self.generics(imp["generics"])
            # Named by the type's public path, so two types of one name
            # do not share lines; `for` as written only when it is not the
            # plain type (a reference, say).
            written = self.ty(imp["for"])
            target = path if written.split("<")[0] == own_name else f"{written} (of {path})"
            head = f"{unsafe}impl{gen} {neg}{self.path(imp['trait'])} for {target}"
            self.emit(head + self.where(imp["generics"]))
            # Associated types and constants a trait impl defines.
            for aid in imp["items"]:
                it = self.item(aid)
                (kind, v), = it["inner"].items()
                if kind == "assoc_type" and v.get("type") is not None:
                    self.emit(f"{head}: type {it['name']}{self.generics(v['generics'])} = {self.ty(v['type'])}")
                elif kind == "assoc_const":
                    self.emit(f"{head}: const {it['name']}: {self.ty(v['type'])}")


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    api = Api(doc)
    root = api.index[str(doc["root"])]
    api.module(root, api.crate)
    for line in sorted(api.lines):
        print(line)


if __name__ == "__main__":
    main()
