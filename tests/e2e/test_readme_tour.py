"""End to end: README's "A five-minute tour of the API", run as written against a live server.

The demo database is built small (40 members, 1,500 purchases, the default
seed) with ``setia demo --no-serve``; then ``setia serve --no-scheduler``
serves it with SETIA_ADMIN_KEY=demo-admin-key, and the tour's second shell
block runs under bash with http://127.0.0.1:8000 replaced by the server's
address. A ``curl`` shell function wraps the real curl and copies every answer
to a log, so each answer is checked against what the README says it shows.

Expected answers (Kopi Setia: pending_days 3, tier member x1):
- cust-9001 enrols: welcome 50, pending.
- the purchase on Saturday 2027-03-06 at kl-01 through pos: base floor(42.50)=42,
  pastry-bonus floor(18.50)=18, weekend (2027, sat) 42, first-visit 100 (first
  purchase, 42.50 >= 10.00); kl-anniversary is June only, app-orders needs app:
  202, pending, so the member shows pending 50 + 202 = 252.
- cust-0001 (the demo member with 370 available Beans) redeems a free latte (150).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.api_server import assert_setia_check_ok, live_server, run_setia

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SEPARATOR = "\x1e"
CROCKFORD_CODE = re.compile(r"^[0-9ABCDEFGHJKMNPQRSTVWXYZ]{12}$")


def tour_script() -> str:
    """The first sh block after "In a second terminal" in the tour section."""
    text = README.read_text()
    section = text.split("## A five-minute tour of the API", 1)[1].split("\n## ", 1)[0]
    after = section.split("In a second terminal", 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match, "no sh block after 'In a second terminal' in README's tour"
    return match.group(1)


def test_the_readme_tour_answers_as_the_readme_says(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'demo.db'}"
    built = run_setia(db_url, "demo", "--no-serve", "--members", "40", "--purchases", "1500")
    assert built.returncode == 0, built.stderr
    script = tour_script()
    assert script.count("curl ") == 10
    assert "http://127.0.0.1:8000" in script
    log = tmp_path / "answers.log"

    with live_server(db_url, tmp_path, admin_key="demo-admin-key") as server:
        wrapper = (
            "set -euo pipefail\n"
            f"curl() {{ command curl \"$@\" | tee -a '{log}'; printf '{SEPARATOR}' >> '{log}'; }}\n"
        )
        ran = subprocess.run(
            ["bash", "-c", wrapper + script.replace("http://127.0.0.1:8000", server.base_url)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        )
        server_log = server.log()

    assert ran.returncode == 0, (ran.stdout, ran.stderr, server_log[-3000:])
    answers: list[dict[str, Any]] = [
        json.loads(answer) for answer in log.read_text().split(SEPARATOR) if answer.strip()]
    assert len(answers) == 10
    (programme, enrolled, applied, replayed, member, activity, redemption, voucher, used,
     bad) = answers

    # The programme as stored
    assert (programme["id"], programme["version"]) == ("kopi-setia", 1)
    assert programme["definition"]["points"]["name"] == "Beans"
    # Enrol a member: the signup rule gives 50 Beans, pending for 3 days
    assert (enrolled["id"], enrolled["name"], enrolled["phone"]) == (
        "cust-9001", "Aisyah", "+60123456789")
    assert enrolled["balances"] == {"available": 0, "pending": 50, "reserved": 0}
    # A purchase from the till: every matching rule adds its Beans, each explained
    assert (applied["event"], applied["status"], applied["points"]) == (
        "till-7-000123", "applied", 202)
    assert [(p["rule"], p["points"]) for p in applied["postings"]] == [
        ("base", 42), ("pastry-bonus", 18), ("weekend", 42), ("first-visit", 100)]
    assert all(p["explanation"] for p in applied["postings"])
    # Send it again: same answer, "status": "replayed", nothing earned twice
    assert replayed == {**applied, "status": "replayed"}
    # The member: tier, progress to the next tier, balances
    assert member["balances"] == {"available": 0, "pending": 252, "reserved": 0}
    assert member["tier"]["id"] == "member"
    assert member["tier"]["next"]["id"] == "gold"
    # Every point explained, newest first
    assert [line["rule"] for line in activity["data"]] == [
        "first-visit", "weekend", "pastry-bonus", "base", "welcome"]
    assert all(line["explanation"] for line in activity["data"])
    # A demo member who has Beans to spend redeems a free latte: a voucher code comes back
    assert (redemption["status"], redemption["member"], redemption["reward"],
            redemption["points"]) == ("captured", "cust-0001", "free-latte", 150)
    code = redemption["voucher"]["code"]
    assert CROCKFORD_CODE.match(code)
    assert f"{code}\n" in ran.stdout  # echo $CODE
    # At the till: check the voucher, then use it
    assert (voucher["code"], voucher["status"]) == (code, "valid")
    assert (used["code"], used["status"]) == (code, "used")
    # Bad input is a problem document naming the field
    assert bad["type"] == "https://setia.dev/problems/invalid-amount"
    assert (bad["status"], bad["field"]) == (422, "amount")
    assert_setia_check_ok(db_url)
