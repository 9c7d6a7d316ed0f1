#!/bin/sh
# Issue 7: dnsviz (with delegation checks) and zonemaster-cli against spaceroute serving this
# fixture on 127.0.0.1:53 and 127.0.0.2:53, where its in-bailiwick nameservers are. Both
# checkers only speak to port 53, so this runs in a private network namespace that has nothing
# but loopback (no packet can leave it, and no port 53 of the machine is taken); with
# --map-root-user it needs no root where unprivileged user namespaces are allowed:
#
#   unshare --net --map-root-user sh tests/data/conformance/check.sh SPACEROUTE ZONES_DIR OUT_DIR
#
# Inside, every query comes from 127.0.0.1, which the fixture's `checkers` peer trusts. For each
# zone it prints `dnsviz ZONE: ERROR|WARNING path: CODE: description` and a closing
# `dnsviz ZONE: N errors, M warnings`, then `zonemaster ZONE: LEVEL TESTCASE TAG args` for each
# finding of level NOTICE or above and `zonemaster ZONE: {level: count}` (every level). The
# JSON files stay in OUT_DIR. Exits non-zero only when a step could not run.
set -eu

bin=$1
zones=$2
out=$3
mkdir -p "$out"

ip link set lo up

"$bin" serve --zones "$zones" --dns 127.0.0.1:53 --dns 127.0.0.2:53 --http 127.0.0.1:0 \
    2>"$out/spaceroute.log" &
pid=$!
# Stop only the spaceroute this script started, whatever happens below.
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT

# Poll until it answers on both addresses: 100 tries, 10 s at most.
tries=0
for ip in 127.0.0.1 127.0.0.2; do
    until kdig "@$ip" herokuapp.com SOA +short +time=1 +retry=0 2>/dev/null | grep -q .; do
        tries=$((tries + 1))
        if [ "$tries" -ge 100 ] || ! kill -0 "$pid" 2>/dev/null; then
            echo "spaceroute did not answer on $ip:53" >&2
            cat "$out/spaceroute.log" >&2
            exit 2
        fi
        sleep 0.1
    done
done

# Zonemaster's profile for loopback: the full default profile (a partial test_levels would
# replace the whole map and silence every other tag), IPv6 off, and the findings that only
# say "this is loopback" (private addresses, no reverse DNS, MNAME on localhost) at INFO.
zonemaster-cli --dump-profile | python3 -c '
import json, sys
p = json.load(sys.stdin)
p["net"]["ipv6"] = False
for module, tag in [("ADDRESS", "NAMESERVER_IP_PRIVATE_NETWORK"),
                    ("ADDRESS", "NO_RESPONSE_PTR_QUERY"),
                    ("ADDRESS", "NAMESERVER_IP_WITHOUT_REVERSE"),
                    ("ZONE", "Z01_MNAME_HAS_LOCALHOST_ADDR")]:
    assert tag in p["test_levels"][module], tag
    p["test_levels"][module][tag] = "INFO"
json.dump(p, sys.stdout, indent=1)
' >"$out/zonemaster-profile.json"

for zone in herokuapp.com corp.example.com; do
    case $zone in
    herokuapp.com) names="herokuapp.com ns1.herokuapp.com internal-app.herokuapp.com std-app.herokuapp.com" ;;
    corp.example.com) names="corp.example.com www.corp.example.com y.corp.example.com x.y.corp.example.com" ;;
    esac
    # -N: dnsviz serves a made-up parent with this delegation (on its own named) and checks
    # NS and glue against the child; -E adds the EDNS compatibility queries.
    # shellcheck disable=SC2086
    dnsviz probe -A -E -N "$zone:ns1.$zone=127.0.0.1,ns2.$zone=127.0.0.2" \
        -o "$out/$zone.probe.json" $names 2>"$out/$zone.probe.log"
    # -P: loopback addresses are what this test is made of, not a finding.
    dnsviz grok -P -r "$out/$zone.probe.json" -o "$out/$zone.grok.json" 2>"$out/$zone.grok.log"
    # Findings sit in `errors` and `warnings` lists at any depth of grok's JSON.
    python3 - "$zone" "$out/$zone.grok.json" <<'EOF'
import json, sys
zone, path = sys.argv[1], sys.argv[2]
found = []
def walk(node, where):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("errors", "warnings") and isinstance(value, list):
                found.extend((key, where, item) for item in value)
            else:
                walk(value, where + [key])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk(value, where + [str(i)])
grok = json.load(open(path))
walk(grok, [])
for kind, where, item in found:
    print(f"dnsviz {zone}: {kind[:-1].upper()} {'/'.join(where)}: {item.get('code')}: "
          f"{item.get('description')} servers={item.get('servers')}")
statuses = {name: value.get("status") for name, value in grok.items() if isinstance(value, dict)}
print(f"dnsviz {zone}: names {json.dumps(statuses, sort_keys=True)}")
errors = sum(kind == "errors" for kind, _, _ in found)
print(f"dnsviz {zone}: {errors} errors, {len(found) - errors} warnings")
EOF

    zonemaster-cli --profile "$out/zonemaster-profile.json" --no-ipv6 \
        --ns "ns1.$zone/127.0.0.1" --ns "ns2.$zone/127.0.0.2" \
        --level INFO --json --no-progress "$zone" \
        >"$out/$zone.zonemaster.json" 2>"$out/$zone.zonemaster.log"
    python3 - "$zone" "$out/$zone.zonemaster.json" <<'EOF'
import collections, json, sys
zone, path = sys.argv[1], sys.argv[2]
messages = json.load(open(path))
for m in messages:
    if m["level"] in ("NOTICE", "WARNING", "ERROR", "CRITICAL"):
        print(f"zonemaster {zone}: {m['level']} {m['testcase']} {m['tag']} "
              f"{json.dumps(m.get('args'), sort_keys=True)}")
counts = collections.Counter(m["level"] for m in messages)
print(f"zonemaster {zone}: {json.dumps(dict(sorted(counts.items())))}")
EOF
done
