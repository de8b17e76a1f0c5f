#!/usr/bin/env python3
"""Compile the kernels as the engine does (one program, NVRTC, sm_90 by default) on a machine
without a GPU, and print each kernel's registers and stack frame (spills), or the compile log on
an error. Needs the NVRTC wheel (`pip install nvidia-cuda-nvrtc`). Compares two trees:

    python3 scripts/probes/nvrtc_regs.py [--arch 90] [--filter attn_decode] [OTHER_TREE]

With OTHER_TREE (another checkout's root), kernels whose registers, frame or SASS bytes differ
are listed side by side (other -> this), "instructions the same" where only the bytes differ
(relocated fields; needs nvdisasm, below). `--sass` prints the disassembly of the kernels the
filter names (nvdisasm from `pip install nvidia-cuda-nvdisasm`), with the lines that touch
local memory (spills, indexed arrays) counted on stderr. The NVRTC here may differ from the GPU machine's, so
compare trees with the same one; the GPU machine's figures are what count.
"""
import argparse, ctypes, glob, os, re, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nvrtc():
    import nvidia
    for p in nvidia.__path__:
        for f in sorted(glob.glob(os.path.join(p, "*", "lib", "libnvrtc.so*"))):
            if "alt" not in f and "builtins" not in f:
                # NVRTC opens its builtins library by name: load it first, from beside it.
                for b in glob.glob(os.path.join(os.path.dirname(f), "libnvrtc-builtins.so*")):
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
                return ctypes.CDLL(f)
    sys.exit("no libnvrtc.so in the nvidia wheels: pip install nvidia-cuda-nvrtc")


def source(root):
    # The order compile.rs's SOURCES gives.
    text = open(os.path.join(root, "crates/sleepy/src/backend/cuda/compile.rs")).read()
    names = re.findall(r'\("([a-z_]+\.cuh?)", include_str!', text)
    out = ""
    for n in names:
        out += f"// ---- {n}\n" + open(os.path.join(root, "crates/sleepy/src/backend/cuda/kernels", n)).read() + "\n"
    return out


def compile_cubin(lib, src, arch):
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"sleepy.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    opts = [f"--gpu-architecture=sm_{arch}".encode(), b"--std=c++17", b"-default-device"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc:
        sys.exit("compile failed:\n" + log.value.decode(errors="replace"))
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    return buf.raw


def kernels(cubin):
    """name -> {regs, frame, text} from the ELF: .nv.info's REGCOUNT (0x2f) and FRAME_SIZE
    (0x11) attributes by symbol, and each .text.NAME section's bytes."""
    b = cubin
    shoff = struct.unpack_from("<Q", b, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    cstr = lambda o: b[o:b.index(b"\0", o)].decode()
    stro = secs[shstrndx][4]
    named = [(cstr(stro + s[0]), s) for s in secs]
    sym = next(s for n, s in named if n == ".symtab")
    strtab = secs[sym[6]][4]
    syms = [cstr(strtab + struct.unpack_from("<IBBHQQ", b, sym[4] + 24 * i)[0]) for i in range(sym[5] // 24)]
    out = {}
    for n, s in named:
        if n.startswith(".text."):
            out.setdefault(n[6:], {})["text"] = b[s[4]:s[4] + s[5]]
        if n.startswith(".nv.info"):
            o, end = s[4], s[4] + s[5]
            while o < end:
                fmt, attr = b[o], b[o + 1]
                if fmt == 4:
                    size = struct.unpack_from("<H", b, o + 2)[0]
                    if size == 8 and attr in (0x2F, 0x11):
                        idx, val = struct.unpack_from("<II", b, o + 4)
                        out.setdefault(syms[idx], {})["regs" if attr == 0x2F else "frame"] = val
                    o += 4 + size
                elif fmt in (2, 3):
                    o += 4
                elif fmt == 1:
                    o += 2
                else:
                    break
    return out


def nvdisasm():
    import nvidia
    for p in nvidia.__path__:
        for f in glob.glob(os.path.join(p, "*", "bin", "nvdisasm")):
            return f
    sys.exit("no nvdisasm in the nvidia wheels: pip install nvidia-cuda-nvdisasm")


def listing(cubin):
    """nvdisasm's listing of the whole cubin."""
    import subprocess, tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm(), f.name], capture_output=True, text=True, check=True).stdout


def body_of(text, name):
    """A kernel's .text section in a listing ("" when absent)."""
    start = text.find(f".text.{name}:")
    if start < 0:
        return ""
    end = text.find(".section", start + 1)
    return text[start:end if end > 0 else len(text)]


def same_instructions(a, b):
    """Listings equal once label numbers and offsets are dropped: the bytes of two kernels can
    differ where the instructions do not (relocated fields filled in at link time)."""
    norm = lambda t: re.sub(r"/\*[0-9a-f]{4,}\*/|\.L_x_[0-9]+", "", t)
    return norm(a) == norm(b)


def sass(cubin, names):
    """Print each named kernel's SASS (its .text section from nvdisasm's whole-cubin listing)."""
    text = listing(cubin)
    for name in names:
        body = body_of(text, name)
        if not body:
            continue
        print(body)
        local = [l for l in body.splitlines() if re.search(r"\b(STL|LDL)\b", l)]
        print(f"{name}: {len(local)} local-memory instructions", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("other", nargs="?")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--filter", default="")
    ap.add_argument("--sass", action="store_true", help="print the filtered kernels' SASS instead")
    a = ap.parse_args()
    lib = nvrtc()
    cubin = compile_cubin(lib, source(ROOT), a.arch)
    this = kernels(cubin)
    if a.sass:
        sass(cubin, sorted(n for n in this if a.filter in n and "text" in this[n]))
        return
    other_cubin = compile_cubin(lib, source(a.other), a.arch) if a.other else None
    other = kernels(other_cubin) if a.other else None
    listings = None
    fmt = lambda k: f'{k.get("regs", "?")} regs, frame {k.get("frame", 0)}' if k else "-"
    for name in sorted(this if other is None else set(this) | set(other)):
        if a.filter not in name:
            continue
        k = this.get(name)
        if other is None:
            print(f"{name:48} {fmt(k)}")
        elif other.get(name) != k:
            same_text = (other.get(name) or {}).get("text") == (k or {}).get("text")
            note = ""
            if not same_text:
                note = " (SASS differs)"
                if other.get(name) and k:
                    listings = listings or (listing(other_cubin), listing(cubin))
                    if same_instructions(body_of(listings[0], name), body_of(listings[1], name)):
                        note = " (bytes differ, instructions the same)"
            print(f"{name:48} {fmt(other.get(name))} -> {fmt(k)}{note}")


if __name__ == "__main__":
    main()
