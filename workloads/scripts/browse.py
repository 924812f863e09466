"""Browsing with a real interpreter (Debian's python3.11, in the study
initramfs): page-like object graphs (nodes with attribute dicts, child lists,
text and parent links, so the cycle collector has work too) are built and
discarded at a steady tick rate, as a page's scripts do between frames.

    python3 -B -S browse.py [--seconds S (0 = forever)] [--ticks-per-second N (0 = flat out)]

Prints once a second, as the Rust workloads do (workloads/src/lib.rs):

    vmsync-workload: counter=<second> checksum=<16 hex> uptime=<s> objects=<n> ticks=<n> dropped=<n>

`objects` counts what the script allocated (per node: the node, its
attribute dict, its child list, its text). The graphs are a function of the
tick number, so `checksum` is a function of `ticks` alone. Late ticks are
dropped rather than replayed, as a browser drops animation frames.
Only builtin modules are imported: without .pyc files, every imported .py
would be compiled at each start.
"""
import sys
import time

# 50 ticks of 4 new pages: about 31,000 objects a second, a sixth of the
# guest's CPU under plain QEMU, leaving room for the hypervisor's overhead.
TICKS_PER_SECOND = 50
PAGES = 64          # graphs alive at once
REPLACED_PER_TICK = 4
MIN_NODES = 20
MAX_NODES = 60
OBJECTS_PER_NODE = 4
MASK = (1 << 64) - 1
TAGS = ("div", "span", "a", "li", "p", "img", "button", "section")
CLASSES = ("row", "col", "card", "title", "muted", "active", "nav", "item")


def mix(z):
    """splitmix64's finaliser, as workloads/src/lib.rs mix64."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class Node:
    def __init__(self, tag, parent, attrs, text):
        self.tag = tag
        self.parent = parent
        self.attrs = attrs
        self.children = []
        self.text = text
        if parent is not None:
            parent.children.append(self)


def build(seed):
    """One page: a tree of MIN_NODES..MAX_NODES nodes. Returns (root, nodes)."""
    x = mix(seed)
    count = MIN_NODES + x % (MAX_NODES - MIN_NODES + 1)
    root = Node("body", None, {"id": seed & 0xFFFF}, None)
    nodes = [root]
    for i in range(1, count):
        x = (x * 6364136223846793005 + 1442695040888963407) & MASK
        parent = nodes[(x >> 33) % len(nodes)]
        attrs = {"id": i, "class": CLASSES[(x >> 20) & 7], "data-n": x & 0xFFFF}
        nodes.append(Node(TAGS[x >> 61], parent, attrs, "n%x" % (x >> 40)))
    return root, count


class Browse:
    def __init__(self):
        self.pages = [build(mix(5 ^ i))[0] for i in range(PAGES)]
        self.ticks = 0
        self.objects = 0
        self.digest = 0x6A09E667F3BCC908

    def tick(self):
        self.ticks += 1
        for j in range(REPLACED_PER_TICK):
            seed = mix((self.ticks << 8) | j)
            root, count = build(seed)
            # The old page is dropped here; its parent links make cycles,
            # which the collector reclaims in its own time.
            self.pages[seed % PAGES] = root
            self.objects += count * OBJECTS_PER_NODE
            self.digest = mix(self.digest ^ seed ^ count)

    def checksum(self):
        return mix(self.digest ^ self.ticks)


def uptime():
    try:
        with open("/proc/uptime") as f:
            return f.read().split()[0]
    except OSError:
        return "unknown"


def parse_args(argv):
    seconds, rate = 10, TICKS_PER_SECOND
    it = iter(argv)
    for flag in it:
        value = next(it, None)
        if flag not in ("--seconds", "--ticks-per-second") or value is None or not value.isdigit():
            sys.exit("usage: browse.py [--seconds S] [--ticks-per-second N]")
        if flag == "--seconds":
            seconds = int(value)
        else:
            rate = int(value)
    return seconds, rate


def sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def main():
    seconds, rate = parse_args(sys.argv[1:])
    b = Browse()
    period = 1.0 / rate if rate else 0.0
    start = time.monotonic()
    slot = dropped = second = 0
    while True:
        line_at = start + second + 1
        if rate == 0 and time.monotonic() < line_at:
            b.tick()
        elif rate and start + slot * period < line_at:
            sleep_until(start + slot * period)
            b.tick()
            due = int((time.monotonic() - start) / period)
            following = max(slot + 1, due)
            dropped += following - slot - 1
            slot = following
        else:
            sleep_until(line_at)
            second += 1
            print(
                "vmsync-workload: counter=%d checksum=%016x uptime=%s objects=%d ticks=%d dropped=%d"
                % (second, b.checksum(), uptime(), b.objects, b.ticks, dropped),
                flush=True,
            )
            if seconds and second >= seconds:
                return 0


if __name__ == "__main__":
    sys.exit(main())
