#!/usr/bin/env python3
"""Generate CPython set-iteration-order oracle cases for src/core/pyset.rs.

Runs seeded random operation sequences on real `set` objects whose elements
have controlled hashes and records, after every operation, a fingerprint of
the iteration order of the set the operation produced or changed.  The Rust
test (`pyset::tests`) replays the same operations on `PySet<u32>` and compares.

Must be run with CPython 3.11 (set layout is an implementation detail):

    python3 tests/oracles/gen_pyset_cases.py > tests/oracles/pyset_cases.json

File format (JSON):
  {"python": "3.11.x", "cases": [case, ...]}
  case = {"name": str, "nsets": int, "hashes": [hash(elem_i), ...],
          "ops": [op, ...], "final": [[elem ids of set k in order], ...]}
  op   = [code, args..., expected]   codes:
    "add" s x fp | "dis" s x fp | "pop" s popped fp | "clr" s fp
    "has" s x 0/1 | "cpy" d a fp | "cmp" d [xs] fp | "upd" s [xs] fp
    "or"/"and"/"sub" d a b fp  (d = a OP b; a may equal b)
    "ior"/"iand"/"isub" a b fp  (a OP= b; a != b)
  fp = fingerprint(list(target set)) as defined by `fingerprint` below.
"""

import json
import random
import sys

MASK64 = (1 << 64) - 1


def fingerprint(ids):
    """FNV-1a 64 over the element ids (and the length), folded to 24 bits."""
    h = 0xCBF29CE484222325
    for x in ids:
        h = ((h ^ x) * 0x100000001B3) & MASK64
    h = ((h ^ len(ids)) * 0x100000001B3) & MASK64
    return ((h >> 32) ^ h) & 0xFFFFFF


class K:
    """Element with a chosen hash; equality is identity, like a distinct key."""

    __slots__ = ("h", "i")

    def __init__(self, i, h):
        self.i = i
        self.h = h

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        return self is other


class Case:
    def __init__(self, name, hashes, nsets, rng):
        self.name = name
        self.elems = [K(i, h) for i, h in enumerate(hashes)]
        self.hashes = [hash(e) for e in self.elems]  # -1 becomes -2
        self.sets = [set() for _ in range(nsets)]
        self.ops = []
        self.rng = rng

    def fp(self, s):
        return fingerprint([e.i for e in self.sets[s]])

    def ids(self, xs):
        return [self.elems[x] for x in xs]

    # --- operations -----------------------------------------------------
    def add(self, s, x):
        self.sets[s].add(self.elems[x])
        self.ops.append(["add", s, x, self.fp(s)])

    def dis(self, s, x):
        self.sets[s].discard(self.elems[x])
        self.ops.append(["dis", s, x, self.fp(s)])

    def pop(self, s):
        if not self.sets[s]:
            return
        e = self.sets[s].pop()
        self.ops.append(["pop", s, e.i, self.fp(s)])

    def clr(self, s):
        self.sets[s].clear()
        self.ops.append(["clr", s, self.fp(s)])

    def has(self, s, x):
        self.ops.append(["has", s, x, int(self.elems[x] in self.sets[s])])

    def cpy(self, d, a):
        src = self.sets[a]
        self.sets[d] = src.copy() if self.rng.random() < 0.5 else set(src)
        self.ops.append(["cpy", d, a, self.fp(d)])

    def cmp(self, d, xs):
        objs = self.ids(xs)
        if self.rng.random() < 0.5:
            self.sets[d] = {o for o in objs}
        else:
            self.sets[d] = set(objs)
        self.ops.append(["cmp", d, list(xs), self.fp(d)])

    def upd(self, s, xs):
        self.sets[s].update(self.ids(xs))
        self.ops.append(["upd", s, list(xs), self.fp(s)])

    def binop(self, code, d, a, b):
        x, y = self.sets[a], self.sets[b]
        r = self.rng.random() < 0.5
        if code == "or":
            res = x | y if r else x.union(y)
        elif code == "and":
            res = x & y if r else x.intersection(y)
        else:
            res = x - y if r else x.difference(y)
        self.sets[d] = res
        self.ops.append([code, d, a, b, self.fp(d)])

    def inplace(self, code, a, b):
        assert a != b
        x, y = self.sets[a], self.sets[b]
        r = self.rng.random() < 0.5
        if code == "ior":
            if r:
                x |= y
            else:
                x.update(y)
        elif code == "iand":
            if r:
                x &= y
            else:
                x.intersection_update(y)
        else:
            if r:
                x -= y
            else:
                x.difference_update(y)
        self.ops.append([code, a, b, self.fp(a)])

    def to_json(self):
        return {
            "name": self.name,
            "nsets": len(self.sets),
            "hashes": self.hashes,
            "ops": self.ops,
            "final": [[e.i for e in s] for s in self.sets],
        }


# --- hash families --------------------------------------------------------
def h_small(rng, n):
    return list(range(n))


def h_rand64(rng, n):
    return [rng.randrange(-(1 << 63), 1 << 63) for _ in range(n)]


def h_mixed(rng, n):
    out = []
    special = [0, 1, -1, -2, 7, 8, -8, (1 << 63) - 1, -(1 << 63), 1 << 32, -(1 << 32)]
    for _ in range(n):
        k = rng.randrange(8)
        if k == 0:
            out.append(rng.choice(special))
        elif k == 1:
            out.append(rng.randrange(-50, 50))
        elif k == 2:
            out.append(rng.randrange(16) << rng.choice([3, 8, 20, 40, 59]))
        elif k == 3:
            out.append(-rng.randrange(1, 1 << 20))
        elif k == 4:
            out.append(rng.choice([5, 13, 1 << 40]))  # heavy collisions
        else:
            out.append(rng.randrange(-(1 << 63), 1 << 63))
    return out


def h_collide(rng, n):
    # Identical low bits, differing high bits: exercises perturb and probes.
    return [(i << 45) | 3 for i in range(n // 2)] + [-((i + 1) << 33) for i in range(n - n // 2)]


# --- scenarios --------------------------------------------------------------
def growth(rng, name, hashes, discard_every=0):
    c = Case(name, hashes, 1, rng)
    order = list(range(len(hashes)))
    rng.shuffle(order)
    for j, x in enumerate(order):
        c.add(0, x)
        if discard_every and j % discard_every == discard_every - 1:
            c.dis(0, order[rng.randrange(j + 1)])
    return c


def dummies(rng, name, hashes):
    n = len(hashes)
    c = Case(name, hashes, 2, rng)
    for x in range(n):
        c.add(0, x)
    c.cpy(1, 0)  # copy without dummies (same-size verbatim or reinsert)
    gone = rng.sample(range(n), n * 3 // 4)
    for x in gone:
        c.dis(0, x)
        if rng.random() < 0.1:
            c.has(0, x)
    c.cpy(1, 0)  # copy of a table with dummies
    for x in gone[: n // 3]:
        c.add(0, x)  # re-add over dummies
    for _ in range(20):
        c.pop(0)
    for x in rng.sample(range(n), 40):
        c.has(0, x)
    c.clr(0)
    for x in rng.sample(range(n), 30):
        c.add(0, x)
    for _ in range(12):
        c.pop(0)
    c.cpy(1, 0)
    for _ in range(5):
        c.pop(1)
    return c


def churn(rng, name, hashes, nops, nsets=3):
    n = len(hashes)
    c = Case(name, hashes, nsets, rng)
    for _ in range(nops):
        s = rng.randrange(nsets)
        r = rng.random()
        if r < 0.45:
            c.add(s, rng.randrange(n))
        elif r < 0.75:
            live = [e.i for e in c.sets[s]]
            if live and rng.random() < 0.8:
                c.dis(s, rng.choice(live))
            else:
                c.dis(s, rng.randrange(n))
        elif r < 0.85:
            c.pop(s)
        elif r < 0.90:
            c.has(s, rng.randrange(n))
        elif r < 0.92:
            c.clr(s)
        elif r < 0.95:
            d = rng.randrange(nsets)
            if d != s:
                c.cpy(d, s)
        elif r < 0.97:
            c.upd(s, [rng.randrange(n) for _ in range(rng.randrange(12))])
        else:
            c.cmp(s, [rng.randrange(n) for _ in range(rng.randrange(40))])
    return c


def setops(rng, name, hashes, rounds, nsets=5):
    n = len(hashes)
    c = Case(name, hashes, nsets, rng)
    for _ in range(rounds):
        # Rebuild some operands with assorted sizes, with and without dummies.
        for s in range(nsets):
            if rng.random() < 0.4:
                size = rng.choice([0, 1, 3, 4, 5, 9, 20, 60, 120])
                xs = [rng.randrange(n) for _ in range(size)]
                c.cmp(s, xs)
                if rng.random() < 0.4 and c.sets[s]:
                    live = [e.i for e in c.sets[s]]
                    for x in rng.sample(live, rng.randrange(len(live) + 1)):
                        c.dis(s, x)
                if rng.random() < 0.2:
                    c.pop(s)
        for _ in range(6):
            code = rng.choice(["or", "and", "sub", "ior", "iand", "isub", "cpy"])
            a = rng.randrange(nsets)
            b = rng.randrange(nsets)
            if code in ("ior", "iand", "isub"):
                if a == b:
                    continue
                c.inplace(code, a, b)
            elif code == "cpy":
                if a != b:
                    c.cpy(b, a)
            else:
                d = rng.randrange(nsets)
                c.binop(code, d, a, b)
            if rng.random() < 0.3:
                c.pop(rng.randrange(nsets))
    return c


def directed(rng):
    """Hand-picked shapes hitting the size thresholds of the set algorithms."""
    hashes = h_mixed(rng, 400)
    c = Case("directed_thresholds", hashes, 4, rng)
    for big, small in [(40, 9), (40, 10), (40, 11), (100, 3), (8, 80), (9, 80), (5, 5), (0, 7)]:
        xs = rng.sample(range(400), big + small)
        c.cmp(0, xs[:big])
        c.cmp(1, xs[big // 2 : big + small])  # overlaps the first half
        c.binop("sub", 2, 0, 1)  # copy-and-discard vs new-set path
        c.binop("sub", 2, 1, 0)
        c.binop("and", 2, 0, 1)
        c.binop("and", 2, 1, 0)
        c.binop("or", 2, 0, 1)
        c.binop("or", 2, 1, 0)
        c.binop("or", 2, 0, 0)
        c.binop("and", 2, 0, 0)
        c.binop("sub", 2, 0, 0)
        c.cpy(3, 0)
        c.inplace("isub", 3, 1)  # difference_update, maybe 8x path + resize
        c.cpy(3, 1)
        c.inplace("isub", 3, 0)
        c.cpy(3, 0)
        c.inplace("iand", 3, 1)
        c.pop(3)
        c.cpy(3, 1)
        c.inplace("ior", 3, 0)
        c.pop(3)
        c.pop(3)
    # Equal-sized operands whose layouts differ (colliding hashes 5 and 13):
    # `a & b` must iterate b, `b & a` must iterate a.
    same = [x for x in range(400) if hashes[x] in (5, 13)][:6]
    assert len(same) >= 4
    c.cmp(0, same)
    c.cmp(1, same[::-1])
    c.binop("and", 2, 0, 1)
    c.binop("and", 2, 1, 0)
    c.cpy(3, 0)
    c.inplace("iand", 3, 1)
    c.cpy(3, 1)
    c.inplace("iand", 3, 0)
    # Copy a set whose table is larger than its contents (mask 31, 5 elems).
    c.clr(0)
    for x in range(5):
        c.add(0, x)
    c.cpy(1, 0)
    c.pop(0)
    c.pop(0)
    c.cpy(1, 0)
    c.clr(1)
    c.inplace("ior", 1, 0)
    return c


def main():
    rng = random.Random(20240611)
    cases = [
        growth(rng, "growth_small_ints", h_small(rng, 2000)),
        growth(rng, "growth_rand64", h_rand64(rng, 600)),
        growth(rng, "growth_mixed_with_discards", h_mixed(rng, 450), discard_every=3),
        growth(rng, "growth_collide", h_collide(rng, 200)),
        dummies(rng, "dummies_rand64", h_rand64(rng, 300)),
        dummies(rng, "dummies_small_ints", h_small(rng, 200)),
        churn(rng, "churn_mixed", h_mixed(rng, 120), 1200),
        churn(rng, "churn_tiny_pool", h_mixed(rng, 12), 500),
        churn(rng, "churn_collide", h_collide(rng, 60), 500),
        setops(rng, "setops_mixed", h_mixed(rng, 500), 30),
        setops(rng, "setops_rand64", h_rand64(rng, 300), 25),
        setops(rng, "setops_small", h_small(rng, 64), 40),
        directed(rng),
    ]
    out = {
        "python": "%d.%d.%d" % sys.version_info[:3],
        "cases": [c.to_json() for c in cases],
    }
    # One op per line keeps diffs readable; no spaces keeps the file small.
    lines = ['{"python":%s,"cases":[' % json.dumps(out["python"])]
    for ci, case in enumerate(out["cases"]):
        lines.append(
            '{"name":%s,"nsets":%d,"hashes":%s,"ops":['
            % (
                json.dumps(case["name"]),
                case["nsets"],
                json.dumps(case["hashes"], separators=(",", ":")),
            )
        )
        ops = case["ops"]
        for oi, op in enumerate(ops):
            lines.append(json.dumps(op, separators=(",", ":")) + ("," if oi + 1 < len(ops) else ""))
        lines.append(
            '],"final":%s}%s'
            % (
                json.dumps(case["final"], separators=(",", ":")),
                "," if ci + 1 < len(out["cases"]) else "",
            )
        )
    lines.append("]}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if sys.version_info[:2] != (3, 11):
        sys.exit("must be generated with CPython 3.11")
    main()
