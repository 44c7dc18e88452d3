#!/usr/bin/env python3
"""Reads and writes SNAC checkpoints as published (config.json + pytorch_model.bin, a torch.save
zip archive of a pickled state dict) without PyTorch, and converts them to a plain GGUF that
`tutti model pack --snac` reads. Only the C++ side interprets the weights; this helper only
moves tensors out of the archive.

The unpickler is restricted: it resolves only the handful of globals a state dict uses
(OrderedDict, the tensor rebuild function, the storage classes), so a checkpoint cannot run
code. Anything else is refused with its name.

  checkpoint.py convert DIR OUT.gguf        state dict + config as GGUF (tensors as stored)
  checkpoint.py list DIR                    names, dtypes and shapes
  checkpoint.py mutate DIR OUT_DIR [--drop NAME] [--nan NAME] [--reshape NAME] [--config K=V]
                                            a modified copy (for tests of malformed input)
"""
import argparse
import collections
import io
import json
import math
import os
import pickle
import struct
import sys
import zipfile

# storage class name -> (GGUF tensor type, struct format, bytes per element)
STORAGES = {
    "FloatStorage": (0, "f", 4),
    "HalfStorage": (1, "e", 2),
    "BFloat16Storage": (30, None, 2),
    "DoubleStorage": (None, "d", 8),  # converted to F32
}


class CheckpointError(Exception):
    pass


class StorageType:
    def __init__(self, name):
        self.name = name


class Tensor:
    """A strided view of one storage, as torch._utils._rebuild_tensor_v2 describes it."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @property
    def dtype(self):
        return self.storage[0].name

    def numel(self):
        return math.prod(self.size)

    def contiguous_bytes(self):
        """The elements in row-major order (the last dimension fastest), as stored type."""
        stype, raw = self.storage
        esize = STORAGES[stype.name][2]
        n = self.numel()
        expect = []
        acc = 1
        for d in reversed(self.size):
            expect.insert(0, acc)
            acc *= d
        if n == 0:
            return b""
        if list(self.stride) == expect or n == 1:
            begin = self.offset * esize
            out = raw[begin:begin + n * esize]
            if len(out) != n * esize:
                raise CheckpointError("a tensor reaches past the end of its storage")
            return out
        # A non-contiguous view: gather element by element.
        out = bytearray()
        idx = [0] * len(self.size)
        for _ in range(n):
            pos = self.offset + sum(i * s for i, s in zip(idx, self.stride))
            out += raw[pos * esize:(pos + 1) * esize]
            for d in reversed(range(len(idx))):
                idx[d] += 1
                if idx[d] < self.size[d]:
                    break
                idx[d] = 0
        return bytes(out)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


class RestrictedUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, data, archive, prefix):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        raise CheckpointError(f"the checkpoint's pickle names {module}.{name}, which a state dict does not use")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError("unknown persistent id in the checkpoint's pickle")
        stype, key = pid[1], str(pid[2])
        if not isinstance(stype, StorageType):
            raise CheckpointError("a storage of unknown type")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}/data/{key}")
            except KeyError:
                raise CheckpointError(f"storage {key} is missing from the archive")
            self.storages[key] = (stype, raw)
        return self.storages[key]


def read_state_dict(path):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a PyTorch zip archive ({e})")
    pkls = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise CheckpointError(f"{path} holds no single data.pkl (a torch.save archive has one)")
    prefix = pkls[0][: -len("/data.pkl")]
    try:
        sd = RestrictedUnpickler(archive.read(pkls[0]), archive, prefix).load()
    except CheckpointError:
        raise
    except Exception as e:  # a damaged pickle
        raise CheckpointError(f"{path}: the pickled state dict cannot be read ({type(e).__name__}: {e})")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    out = collections.OrderedDict()
    for k, v in sd.items():
        if isinstance(v, Tensor):
            out[str(k)] = v
    return out


def read_checkpoint(directory):
    cfg_path = os.path.join(directory, "config.json")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: {e}")
    for name in ("pytorch_model.bin", "model.pt"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return config, read_state_dict(p)
    raise CheckpointError(f"{directory} holds no pytorch_model.bin")


# ---- GGUF (v3) writing: only what the converted file needs.
def _gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path, metadata, tensors):
    """metadata: {key: str}; tensors: [(name, ggml_type, shape_row_major, bytes)]."""
    align = 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, v in metadata.items():
        head += _gguf_string(k) + struct.pack("<I", 8) + _gguf_string(v)
    offset = 0
    infos = b""
    for name, gtype, shape, data in tensors:
        dims = list(reversed(shape)) or [1]  # GGUF lists ne0 (fastest) first
        infos += _gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", gtype, offset)
        offset += (len(data) + align - 1) // align * align
    body = head + infos
    body += b"\0" * ((align - len(body) % align) % align)
    with open(path, "wb") as f:
        f.write(body)
        for _, _, _, data in tensors:
            f.write(data)
            f.write(b"\0" * ((align - len(data) % align) % align))


def convert(directory, out_path):
    config, sd = read_checkpoint(directory)
    tensors = []
    for name, t in sd.items():
        gtype, fmt, esize = STORAGES[t.dtype]
        data = t.contiguous_bytes()
        if gtype is None:  # double: narrowed to float32
            vals = struct.unpack(f"<{t.numel()}d", data)
            data, gtype = struct.pack(f"<{len(vals)}f", *vals), 0
        tensors.append((name, gtype, list(t.size), data))
    write_gguf(out_path, {"general.architecture": "snac-checkpoint", "snac.config": json.dumps(config)}, tensors)


# ---- writing torch.save archives, for tests that need malformed checkpoints.
class _Pickler(pickle.Pickler):
    def __init__(self, f, storages):
        super().__init__(f, protocol=2)
        self.storages = storages

    def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__storage__":
            key, (stype, raw) = obj[1]
            return ("storage", StorageType(stype), key, "cpu", len(raw) // STORAGES[stype][2])
        return None

    def reducer_override(self, obj):
        if isinstance(obj, StorageType):
            return (getattr, (_TorchModule, obj.name))
        return NotImplemented


class _TorchModuleType:
    pass


_TorchModule = _TorchModuleType()


def write_state_dict(path, sd, prefix="archive"):
    """sd: {name: (storage_name, shape, raw bytes)} written as torch.save would."""
    buf = io.BytesIO()
    storages = []
    items = []
    for i, (name, (stype, shape, raw)) in enumerate(sd.items()):
        storages.append((str(i), (stype, raw)))
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        items.append((name, str(i), stype, tuple(shape), tuple(stride), raw))
    # Hand-written protocol-2 pickle, as torch.save lays it out.
    out = io.BytesIO()
    w = out.write

    def glob(module, name):
        w(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def uni(s):
        b = s.encode()
        w(b"X" + struct.pack("<I", len(b)) + b)

    def intv(v):
        w(b"J" + struct.pack("<i", v))

    def tup(vals):
        w(b"(")
        for v in vals:
            intv(v)
        w(b"t")

    w(b"\x80\x02")
    glob("collections", "OrderedDict")
    w(b")R(")
    for name, key, stype, shape, stride, raw in items:
        uni(name)
        glob("torch._utils", "_rebuild_tensor_v2")
        w(b"(")
        w(b"(")
        uni("storage")
        glob("torch", stype)
        uni(key)
        uni("cpu")
        intv(len(raw) // STORAGES[stype][2])
        w(b"tQ")
        intv(0)
        tup(shape)
        tup(stride)
        w(b"\x89")
        glob("collections", "OrderedDict")
        w(b")R")
        w(b"tR")
    w(b"u.")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", out.getvalue())
        for key, (stype, raw) in storages:
            z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", "3\n")


def mutate(directory, out_dir, drop, nan, reshape, config_set):
    config, sd = read_checkpoint(directory)
    plain = collections.OrderedDict()
    for name, t in sd.items():
        plain[name] = (t.dtype, list(t.size), t.contiguous_bytes())
    for name in drop:
        if name not in plain:
            raise CheckpointError(f"no tensor {name}")
        del plain[name]
    for name in nan:
        stype, shape, raw = plain[name]
        if stype != "FloatStorage":
            raise CheckpointError("--nan needs a float32 tensor")
        plain[name] = (stype, shape, struct.pack("<f", float("nan")) + raw[4:])
    for name in reshape:  # drop the last element of the first dimension's extent
        stype, shape, raw = plain[name]
        inner = math.prod(shape[1:]) if len(shape) > 1 else 1
        shape = [shape[0] - 1] + shape[1:]
        plain[name] = (stype, shape, raw[: len(raw) - inner * STORAGES[stype][2]])
    for kv in config_set:
        k, v = kv.split("=", 1)
        config[k] = json.loads(v)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    write_state_dict(os.path.join(out_dir, "pytorch_model.bin"), plain)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("dir")
    c.add_argument("out")
    l = sub.add_parser("list")
    l.add_argument("dir")
    m = sub.add_parser("mutate")
    m.add_argument("dir")
    m.add_argument("out_dir")
    m.add_argument("--drop", action="append", default=[])
    m.add_argument("--nan", action="append", default=[])
    m.add_argument("--reshape", action="append", default=[])
    m.add_argument("--config", action="append", default=[])
    a = ap.parse_args()
    try:
        if a.cmd == "convert":
            convert(a.dir, a.out)
        elif a.cmd == "list":
            _, sd = read_checkpoint(a.dir)
            for name, t in sd.items():
                print(name, t.dtype, list(t.size))
        else:
            mutate(a.dir, a.out_dir, a.drop, a.nan, a.reshape, a.config)
    except CheckpointError as e:
        print(f"snac checkpoint: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
