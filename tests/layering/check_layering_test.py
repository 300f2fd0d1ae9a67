"""scripts/check-layering fails on a tree where daemon/ includes bench/, and names the file."""
import os
import subprocess
import sys
import tempfile

check = sys.argv[1]
with tempfile.TemporaryDirectory() as root:
    for folder, text in {"bench": '#include "knowledge/a.h"\n',
                         "knowledge": '#include "model/m.h"\n',
                         "model": "",
                         "daemon": '#include "bench/eval.h"\n#include "knowledge/a.h"\n'}.items():
        os.makedirs(os.path.join(root, folder))
        with open(os.path.join(root, folder, "x.cc"), "w") as f:
            f.write(text)
    r = subprocess.run(["/usr/bin/python3", check, root], capture_output=True, text=True)
    assert r.returncode == 1, r
    assert 'daemon/x.cc: includes "bench/..."' in r.stdout, r.stdout
    assert r.stdout.count("\n") == 1, r.stdout  # only that include
    os.remove(os.path.join(root, "daemon", "x.cc"))
    r = subprocess.run(["/usr/bin/python3", check, root], capture_output=True, text=True)
    assert r.returncode == 0, r
print("ok")
