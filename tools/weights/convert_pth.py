#!/usr/bin/env python3
"""Convert a PyTorch LEGACY-format (non-zip) .pth state dict to safetensors, standard library only.

    python3 tools/weights/convert_pth.py IN.pth OUT.safetensors [--model efficientnet-lite0]

No torch, no numpy: the pickle streams are read with a restricted pickle.Unpickler whose
find_class / persistent_load return plain stand-in objects, and the raw storages are copied
byte for byte. The legacy layout (torch.serialization._legacy_save) is:

    pickle: magic number 0x1950a86a20f9469cfc6c
    pickle: protocol version 1001
    pickle: sys info {'protocol_version', 'little_endian', 'type_sizes'}
    pickle: the object (here an OrderedDict name -> tensor); tensors are
            torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])
            (or the older _rebuild_tensor(storage, offset, size, stride)); storages are persistent
            ids ('storage', storage_type, key, location, numel[, view_metadata]), where
            view_metadata is None or (view_key, element_offset, view_numel)
    pickle: the list of storage keys
    then, per key in that order: int64 LE element count, then count * element_size raw LE bytes

Only float32 tensors (FloatStorage) are converted. `*.num_batches_tracked` (int64 BatchNorm counters,
useless at inference) are SKIPPED; any other non-float32 tensor is an error naming the tensor.
Non-contiguous tensors (any stride / storage offset) are materialised contiguous row-major.

The output is written atomically (temp file in the same directory, fsync, os.replace). Tensor names
are kept exactly as in the .pth. The header's `__metadata__` holds `source` (file name),
`source_sha256`, `model`, `format` ("pt"), `converter` and `skipped_num_batches_tracked` (how many were dropped).
"""

import argparse
import array
import collections
import hashlib
import itertools
import json
import os
import pickle
import struct
import sys
import tempfile

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# storage class name -> (element size in bytes, safetensors dtype or None if not converted)
STORAGE_TYPES = {
    "FloatStorage": (4, "F32"),
    "DoubleStorage": (8, None),
    "HalfStorage": (2, None),
    "BFloat16Storage": (2, None),
    "LongStorage": (8, None),
    "IntStorage": (4, None),
    "ShortStorage": (2, None),
    "CharStorage": (1, None),
    "ByteStorage": (1, None),
    "BoolStorage": (1, None),
}


class ConvertError(Exception):
    pass


class StorageType:
    def __init__(self, name):
        self.name = name
        if name not in STORAGE_TYPES:
            raise ConvertError(f"unknown storage type torch.{name}")
        self.element_size, self.dtype = STORAGE_TYPES[name]


class StorageRef:
    """A (view of a) storage as referenced by a persistent id."""

    def __init__(self, stype, key, numel, offset=0):
        self.stype, self.key, self.numel, self.offset = stype, key, numel, offset


class TensorRef:
    def __init__(self, storage, storage_offset, size, stride):
        if not isinstance(storage, StorageRef):
            raise ConvertError("tensor rebuilt from something that is not a storage")
        self.storage = storage
        self.storage_offset = int(storage_offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)
        if len(self.size) != len(self.stride):
            raise ConvertError(f"tensor with size {self.size} but stride {self.stride}")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.nn.parameter", "_rebuild_parameter"): _rebuild_parameter,
}


def _str(x):
    return x.decode("ascii") if isinstance(x, bytes) else x


class LegacyUnpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f, encoding="latin1")
        self.storages = storages  # key -> (StorageType, numel) of root storages

    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ConvertError(f"the pickle refers to {module}.{name}, which this converter "
                               f"does not allow (only plain tensor state dicts)") from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or _str(pid[0]) != "storage":
            raise ConvertError(f"unsupported persistent id {pid!r}")
        if len(pid) == 6:
            _, stype, key, _location, numel, view = pid
        elif len(pid) == 5:
            _, stype, key, _location, numel = pid
            view = None
        else:
            raise ConvertError(f"unsupported storage persistent id {pid!r}")
        if not isinstance(stype, StorageType):
            raise ConvertError(f"storage {key!r} has no torch storage type")
        key = _str(key)
        numel = int(numel)
        prev = self.storages.setdefault(key, (stype, numel))
        if prev[0].name != stype.name or prev[1] != numel:
            raise ConvertError(f"storage {key!r} declared twice differently")
        if view is None:
            return StorageRef(stype, key, numel)
        view_key, offset, view_numel = view
        if int(offset) + int(view_numel) > numel:
            raise ConvertError(f"storage view {view_key!r} runs past storage {key!r}")
        return StorageRef(stype, key, int(view_numel), int(offset))


def _materialise(name, t, raw):
    """Contiguous row-major bytes of tensor `t` whose root storage bytes are `raw`."""
    esize = t.storage.stype.element_size
    base = t.storage.offset + t.storage_offset
    n = 1
    for s in t.size:
        n *= s
    if n == 0:
        return b""
    # Bounds: the largest element index reached must lie inside the (view of the) storage.
    hi = t.storage_offset + sum((s - 1) * st for s, st in zip(t.size, t.stride))
    lo = t.storage_offset + sum((s - 1) * st for s, st in zip(t.size, t.stride) if st < 0)
    if lo < 0 or hi >= t.storage.numel:
        raise ConvertError(f"tensor {name}: size {t.size} / stride {t.stride} / offset "
                           f"{t.storage_offset} reach outside its storage of {t.storage.numel}")
    # Contiguous row-major fast path.
    expect, contiguous = 1, True
    for s, st in reversed(list(zip(t.size, t.stride))):
        if s != 1 and st != expect:
            contiguous = False
            break
        expect *= s
    if contiguous:
        return bytes(raw[base * esize:(base + n) * esize])
    # General case: copy element bit patterns (unsigned ints, so NaN payloads survive), one
    # strided slice of the last (non-1) dimension at a time; size-1 dimensions do not matter.
    code = {1: "B", 2: "H", 4: "I", 8: "Q"}[esize]
    mv = memoryview(raw).cast(code)
    out = array.array(code)
    dims = [(s, st) for s, st in zip(t.size, t.stride) if s != 1]
    (last, last_st), outer = dims[-1], dims[:-1]
    for idx in itertools.product(*(range(s) for s, _ in outer)):
        off = base + sum(i * st for i, (_, st) in zip(idx, outer))
        if last_st > 0:
            out.extend(mv[off:off + (last - 1) * last_st + 1:last_st])
        else:
            out.extend(mv[off + j * last_st] for j in range(last))
    if sys.byteorder != "little":
        out.byteswap()  # mv read the little-endian file bytes as native ints
    return out.tobytes()


def read_legacy_pth(path):
    """Returns (OrderedDict name -> (dtype, shape, bytes), skipped names)."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:2] == b"PK":
            raise ConvertError(f"{path}: is a zip-format torch file; this converter reads only the "
                               f"legacy (pre-1.6) format")
        f.seek(0)
        try:
            magic = pickle.load(f)
            if magic != MAGIC_NUMBER:
                raise ConvertError(f"{path}: not a legacy torch file (bad magic number)")
            proto = pickle.load(f)
            if proto != PROTOCOL_VERSION:
                raise ConvertError(f"{path}: unsupported legacy protocol version {proto!r}")
            sys_info = pickle.load(f)
            if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
                raise ConvertError(f"{path}: only little-endian files are supported")
            storages = {}
            obj = LegacyUnpickler(f, storages).load()
            keys = [_str(k) for k in pickle.load(f)]
            raws = {}
            for key in keys:
                if key not in storages:
                    raise ConvertError(f"{path}: storage key {key!r} not referenced by the object")
                stype, numel = storages[key]
                hdr = f.read(8)
                if len(hdr) != 8:
                    raise EOFError(f"storage {key!r} size")
                (count,) = struct.unpack("<q", hdr)
                if count != numel:
                    raise ConvertError(f"{path}: storage {key!r} has {count} elements in the data "
                                       f"but {numel} in the pickle (corrupt file)")
                nbytes = count * stype.element_size
                data = f.read(nbytes)
                if len(data) != nbytes:
                    raise EOFError(f"storage {key!r} data")
                raws[key] = data
            missing = set(storages) - set(raws)
            if missing:
                raise ConvertError(f"{path}: storages {sorted(missing)} have no data (corrupt file)")
            if f.read(1):
                raise ConvertError(f"{path}: trailing bytes after the last storage (corrupt file)")
        except ConvertError:
            raise
        except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError,
                IndexError, AttributeError, KeyError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: truncated or corrupt legacy torch file ({type(e).__name__}: {e})") from None

    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: the pickled object is a {type(obj).__name__}, not a state dict")
    tensors, skipped = collections.OrderedDict(), []
    for name, t in obj.items():
        if not isinstance(t, TensorRef):
            raise ConvertError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        dtype = t.storage.stype.dtype
        if name.endswith("num_batches_tracked"):
            skipped.append(name)
            continue
        if dtype != "F32":
            raise ConvertError(f"{path}: tensor {name!r} is torch.{t.storage.stype.name}; "
                               f"only float32 (FloatStorage) tensors are supported")
        tensors[name] = (dtype, list(t.size), _materialise(name, t, raws[t.storage.key]))
    return tensors, skipped


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    offset = 0
    order = sorted(tensors)
    for name in order:
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(struct.pack("<Q", len(hbytes)))
            out.write(hbytes)
            for name in order:
                out.write(tensors[name][2])
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def guess_model_name(path):
    # efficientnet-lite0-57934424.pth -> efficientnet-lite0 (drops a trailing hash part)
    stem = os.path.basename(path).rsplit(".", 1)[0]
    head, _, tail = stem.rpartition("-")
    if head and len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return head
    return stem


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="legacy-format .pth state dict")
    ap.add_argument("output", help="safetensors file to write")
    ap.add_argument("--model", help="model name for the metadata (default: from the file name)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        tensors, skipped = read_legacy_pth(args.input)
        meta = {
            "source": os.path.basename(args.input),
            "source_sha256": sha256_file(args.input),
            "model": args.model or guess_model_name(args.input),
            "format": "pt",
            "converter": "adp tools/weights/convert_pth.py",
            "skipped_num_batches_tracked": str(len(skipped)),
        }
        write_safetensors(args.output, tensors, meta)
    except ConvertError as e:
        print(f"convert_pth: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"convert_pth: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"convert_pth: wrote {len(tensors)} tensors to {args.output} "
              f"(skipped {len(skipped)} num_batches_tracked)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
