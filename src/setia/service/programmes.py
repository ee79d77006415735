"""Programmes: validate a file, store it as a new immutable version when it changed."""

from __future__ import annotations

import json
import re
from typing import Any

import sqlalchemy as sa
import yaml

from setia.adapters.db import tables as t
from setia.adapters.db import tables_coupons as tc
from setia.adapters.db import tables_engagement as te
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import InvalidField, InvalidProgramme, VersionConflict
from setia.domain.programme import (
    ProgrammeModel,
    canonical_json,
    definition_hash,
    validate_document,
)
from setia.service import audit
from setia.service.common import Clock, require_programme, transaction, utc_now


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read the key ``on:`` as True.
    A key given twice in one mapping is refused (YAML would keep the last one: a second
    ``earn:`` would drop every rule of the first), and so is a date no calendar has."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor": merged keys may be given again, to override them
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader refuses it itself
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found the key {key!r} twice in one mapping",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a date: {exc}", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_text(text: str | bytes, source: str = "programme") -> Any:
    """YAML is a superset of JSON, so one parser reads both."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown place)"
        # the problem and what was being read, on one line (str(exc) quotes the text
        # around the mark over several lines, with a caret under it)
        said = [str(part) for part in (getattr(exc, "context", None),
                                       getattr(exc, "problem", None)) if part]
        reason = ", ".join(said) if said else " ".join(str(exc).split())
        raise InvalidProgramme([(f"{source}:{where}", f"not valid YAML or JSON: {reason}")]
                               ) from None


def validate_text(text: str | bytes) -> ProgrammeModel:
    return validate_document(parse_text(text))


def store_programme(engine: sa.Engine, document: Any, *, program_id: str | None = None,
                    base_version: int | None = None, clock: Clock = utc_now) -> dict[str, Any]:
    """Store a programme; a new version only if its definition changed. With
    ``base_version`` (the version a draft was edited from), a change is refused while
    another version is current: someone stored one meanwhile, and saving would undo it."""
    model = validate_document(document)
    if program_id is not None and model.id != program_id:
        raise InvalidField(f"the file's id {model.id!r} is not {program_id!r}", field="id")
    digest = definition_hash(model)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        now = clock()
        current = uow.execute(
            sa.select(t.programs.c.current_version).where(t.programs.c.id == model.id)
            .with_for_update()
        ).scalar_one_or_none()
        if current is not None:
            current_hash = uow.execute(
                sa.select(t.program_versions.c.definition_hash).where(
                    t.program_versions.c.program_id == model.id,
                    t.program_versions.c.version == current,
                )
            ).scalar_one()
            if current_hash == digest:
                return {"id": model.id, "version": current, "created": False}
        if base_version is not None and (current or 0) != base_version:
            raise VersionConflict(
                f"version {current} was stored while this draft was edited from version "
                f"{base_version}; review the changes against it and save again",
                field="base", current_version=current)
        if current is not None:
            _refuse_unit_changes(uow, model)
        version = (current or 0) + 1
        if current is None:
            uow.execute(t.programs.insert().values(id=model.id, current_version=version,
                                                   created_at=now))
        else:
            uow.execute(t.programs.update().where(t.programs.c.id == model.id)
                        .values(current_version=version))
        uow.execute(t.program_versions.insert().values(
            program_id=model.id, version=version, definition=canonical_json(model),
            definition_hash=digest, created_at=now,
        ))
        _drop_unlimited_counters(uow, model)
        audit.record(uow, "programme.store", program_id=model.id, target=f"programme {model.id}",
                     before={"version": current}, after={"version": version, "hash": digest},
                     now=now)
        uow.commit()
        return {"id": model.id, "version": version, "created": True}

    return transaction(engine, work)


def _refuse_unit_changes(uow: UnitOfWork, model: Any) -> None:
    """Orders' amounts and store credit are kept in the programme's currency, in its minor
    units, and the tier metric's months, daily caps, periods and expiry dates are counted
    on its wall clock: once there are orders or postings, another currency would revalue
    them (RM 5.50 of credit read as JPY 550), and another time zone would move the months
    a refund, a rejection or a reversal lowers away from those its purchase raised."""
    before = uow.programme(model.id)
    if before is None:
        return
    changed = [(name, old, new) for name, old, new in (
        ("currency", before.currency, model.currency),
        ("timezone", before.model.timezone, model.timezone)) if old != new]
    if not changed:
        return
    for table in (t.orders, t.postings):
        if uow.execute(sa.select(table.c.program_id).where(
                table.c.program_id == model.id).limit(1)).first() is not None:
            name, old, new = changed[0]
            raise InvalidField(f"{name} cannot change from {old} to {new}: the programme "
                               "has orders or postings in it already", field=name)


def _drop_unlimited_counters(uow: UnitOfWork, model: Any) -> None:
    """The counters kept beside a campaign's ``budget`` and a coupon's ``max_uses`` count
    only while a version has the limit: a version without it drops them, and the first
    award or use under a version with it again makes them afresh from the awards and the
    uses standing (``engagement._lock_budget``, ``coupons._take``), so what was given
    meanwhile counts too."""
    b, cc = te.campaign_budgets, tc.coupon_counters
    limited = [c.id for c in model.campaigns or [] if c.budget is not None]
    uow.execute(b.delete().where(b.c.program_id == model.id, b.c.campaign_id.not_in(limited)))
    capped = [c.id for c in model.coupons or [] if c.max_uses is not None]
    uow.execute(cc.delete().where(cc.c.program_id == model.id, cc.c.coupon_id.not_in(capped)))


def get_programme(engine: sa.Engine, program_id: str) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        return {
            "id": programme.id,
            "version": programme.version,
            "definition": json.loads(canonical_json(programme.model)),
        }

    return transaction(engine, work, read_only=True)
