"""Stanford's PTBTokenizer (the jar pycocoevalcap ships) run as pycocoevalcap's wrapper runs it, with the same
arguments, line per caption and punctuation dropped, but from a temporary folder of its own (the wrapper writes
into its package's folder, which a shared or container install may not let it) and with its failures named (the
wrapper reads whatever java printed: a java that does not run gave an error deep inside the CIDEr scorer)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from meter.errors import DataError

TOKENIZER_CLASS = "edu.stanford.nlp.process.PTBTokenizer"


def java_problem() -> str:
    """Why Stanford's tokenizer cannot run here ("" if it can): no java on the PATH, or one that does not run (the
    stub some systems have without a Java runtime)."""
    return _java_problem(os.environ.get("PATH", ""))


@functools.cache  # asked once per PATH: each score asks
def _java_problem(path: str) -> str:
    if shutil.which("java", path=path) is None:
        return "no java on the PATH"
    try:
        done = subprocess.run([shutil.which("java", path=path) or "java", "-version"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"java on the PATH does not run ({error})"
    if done.returncode != 0:
        return f"java on the PATH does not run (`java -version` exited {done.returncode})"
    return ""


def _jar() -> Path:
    from pycocoevalcap.tokenizer import ptbtokenizer  # imported here: training never needs pycocoevalcap

    return Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR


def stanford_tokenize(captions: Mapping[str, Sequence[str]], punctuation: set[str]) -> dict[str, list[str]]:
    """id -> captions as the wrapper returns them: lower-cased PTB tokens joined by spaces, `punctuation` dropped.
    Each caption must be one line (no line breaks)."""
    keys = [key for key, texts in captions.items() for _ in texts]
    jar = _jar()
    with tempfile.TemporaryDirectory(prefix="meter-ptb-") as folder:
        lines = Path(folder) / "captions.txt"
        lines.write_bytes("\n".join(c for texts in captions.values() for c in texts).encode())
        command = ["java", "-cp", str(jar), TOKENIZER_CLASS, "-preserveLines", "-lowerCase", str(lines)]
        try:
            done = subprocess.run(command, capture_output=True)
        except OSError as error:
            raise DataError(f"Stanford's PTBTokenizer did not start ({' '.join(command[:3])}): {error}") from None
    tokenized = done.stdout.decode().split("\n")
    if done.returncode != 0 or len(tokenized) < len(keys):
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(
            f"Stanford's PTBTokenizer (java -cp {jar}) failed with exit code {done.returncode}, "
            f"{len(tokenized)} lines for {len(keys)} captions: {said[-1] if said else 'nothing said'}"
        )
    out: dict[str, list[str]] = {}
    for key, line in zip(keys, tokenized, strict=False):
        out.setdefault(key, []).append(" ".join(word for word in line.rstrip().split(" ") if word not in punctuation))
    return out
