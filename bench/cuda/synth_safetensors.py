"""The safetensors writer of the synthetic checkpoints (make_synth_llama.py,
make_synth_moe.py): tensors are (name, dtype, shape, pattern) and each one's
bytes are its pattern tiled. With rng, each tensor starts at its own
64-byte-aligned offset into the pattern (rng.randrange(start_slots) * 64), so
tensors sharing a pattern still differ."""
import json
import struct

ES = {"BF16": 2, "U32": 4, "U8": 1}


def write_safetensors(path, tensors, fmt, rng=None, start_slots=0):
    """Writes path; returns the data's size in bytes. fmt: the metadata's
    "format" ("mlx" or "pt")."""
    header, off = {}, 0
    for name, dt, shp, _ in tensors:
        n = ES[dt]
        for d in shp:
            n *= d
        header[name] = {"dtype": dt, "shape": shp, "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": fmt}
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, _, _, pat in tensors:
            n = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            view = memoryview(pat)
            at = rng.randrange(start_slots) * 64 if rng else 0
            while n > 0:
                k = min(n, len(pat) - at)
                f.write(view[at:at + k])
                n -= k
                at = 0
    return off
