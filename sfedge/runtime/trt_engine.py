"""`TrtEngine`: a TensorRT plan (written by `sfedge build`) behind the same `Engine` interface as
`OrtEngine`: `inputs` / `outputs` discovered from the plan, `infer(feeds, on_device=False)`.

Written to TensorRT 10's name-based tensor API, which is also the only one TensorRT 11 keeps
(`num_io_tensors`, `get_tensor_name/mode/dtype/shape`, `get_tensor_profile_shape`,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Device memory and the stream come
from cuda-python's runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart` in older
releases), imported only when a TrtEngine is made: it is the optional extra `sfedge[tensorrt]`,
never a dependency of the ONNX Runtime path. TensorRT itself comes with the target (JetPack).

Buffers: one device buffer per I/O tensor, allocated once when the engine opens, inputs at the
profile's max shape and outputs at the shapes those imply; a call that needs more (an output
whose size is not largest at the largest input) grows that buffer. Per call: host inputs are
copied in on the engine's stream, `set_input_shape` + `set_tensor_address` for every tensor,
output shapes from `context.get_tensor_shape`, `execute_async_v3`, outputs copied out (or left on
the device as `DeviceTensor`s with `on_device=True`, which another TrtEngine reads in place and
anything else reads through `numpy()` / `np.asarray`).

Never run against the real TensorRT or CUDA here (no GPU, no TensorRT wheel on the dev host):
tests/test_tensorrt.py drives it with fake `tensorrt` and `cudart` modules.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SfedgeError
from .engines import Engine, TensorInfo

TRT_MISSING = ("TensorRT is not installed: install it on the target (JetPack 6 ships it: "
               "apt install python3-libnvinfer; elsewhere pip install tensorrt); plans are built and run "
               "on the device that uses them")


def import_tensorrt():
    """The `tensorrt` module, or SfedgeError saying how to get it."""
    try:
        import tensorrt
    except (ImportError, OSError) as e:  # OSError: the module is there but libnvinfer is not
        raise SfedgeError(f"{TRT_MISSING} ({e})") from None
    return tensorrt


def load_cudart():
    """cuda-python's CUDA runtime bindings (new and old module paths), or SfedgeError."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python 12.x
        except ImportError:
            raise SfedgeError("native TensorRT plans need cuda-python for device memory: "
                              "pip install 'sfedge[tensorrt]' (cuda-python>=12)") from None
    return cudart


def cuda_check(cudart, result, what: str):
    """cuda-python calls return (error, *values): raise SfedgeError unless success; the value(s)."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise SfedgeError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else tuple(values) or None


def native_plan(root: str | Path, manifest: dict, component: str) -> Path | None:
    """The plan `sfedge build` recorded for `component` in manifest["tensorrt"], or None."""
    rel = ((manifest.get("tensorrt") or {}).get("plans") or {}).get(component)
    return Path(root) / rel if rel else None


class DeviceTensor:
    """A TrtEngine output left on the GPU: valid until that engine's next `infer`."""

    def __init__(self, engine: "TrtEngine", ptr: int, shape: tuple, dtype):
        self.engine, self.ptr, self.shape, self.dtype = engine, ptr, tuple(shape), np.dtype(dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        return self.engine.to_host(self.ptr, self.shape, self.dtype)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)


class TrtEngine(Engine):
    """A deserialized TensorRT plan with one execution context, one stream and fixed buffers.
    `manifest_io`: the manifest's component entry; its input/output names must match the plan's."""

    def __init__(self, plan_path: str | Path, manifest_io: dict | None = None):
        trt = self._trt = import_tensorrt()
        cudart = self._cudart = load_cudart()
        self.path, self.device = Path(plan_path), "cuda"
        if not self.path.is_file():
            raise SfedgeError(f"TensorRT plan not found: {self.path} (run `sfedge build`)")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise SfedgeError(f"TensorRT {trt.__version__} cannot load {self.path}: plans only load on the GPU "
                              f"and TensorRT version that built them (see trt/plans.json); rerun `sfedge build`")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise SfedgeError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self.inputs: dict[str, TensorInfo] = {}
        self.outputs: dict[str, TensorInfo] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            try:
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).type
            except TypeError:
                raise SfedgeError(f"{self.path}: tensor {name} has a type numpy cannot hold "
                                  f"({self.engine.get_tensor_dtype(name)})") from None
            shape = tuple(int(d) if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            io = self.inputs if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs
            io[name] = TensorInfo(name, dtype, shape)
        if manifest_io is not None:
            self._check_names(manifest_io)
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        for name in self.inputs:  # every input at its largest shape, then the outputs that implies
            shape = self._max_shape(name)
            self._set_shape(name, shape)
            self._reserve(name, _nbytes(shape, self.inputs[name].dtype))
        for name in self.outputs:
            self._reserve(name, _nbytes(self._output_shape(name), self.outputs[name].dtype))

    # --- the Engine interface ------------------------------------------------------------------

    def infer(self, feeds: dict, *, on_device: bool = False) -> dict:
        """feeds: name -> numpy array, DeviceTensor (read in place), or anything with `.numpy()`
        (an OrtValue: copied through the host). Returns numpy arrays, or DeviceTensors."""
        if set(feeds) != set(self.inputs):
            raise SfedgeError(f"{self.path.name}: expected inputs {sorted(self.inputs)}, got {sorted(feeds)}")
        cudart, keep = self._cudart, []  # host arrays stay alive until the stream is synchronised
        for name, value in feeds.items():
            dtype = np.dtype(self.inputs[name].dtype)
            if isinstance(value, DeviceTensor):
                if value.dtype != dtype:
                    raise SfedgeError(f"{self.path.name}: {name} is {dtype.name}, the device tensor given is {value.dtype.name}")
                shape, ptr = value.shape, value.ptr
            else:
                if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
                    value = value.numpy()
                arr = np.ascontiguousarray(value, dtype=dtype)
                shape = arr.shape
                self._reserve(name, arr.nbytes)
                ptr = self._buffers[name][0]
                cuda_check(cudart, cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes,
                                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                                          self._stream), "copy to device")
                keep.append(arr)
            self._set_shape(name, shape)
            self.context.set_tensor_address(name, ptr)
        shapes = {}
        for name, info in self.outputs.items():
            shapes[name] = self._output_shape(name)
            self._reserve(name, _nbytes(shapes[name], info.dtype))
            self.context.set_tensor_address(name, self._buffers[name][0])
        if not self.context.execute_async_v3(self._stream):
            raise SfedgeError(f"TensorRT failed to run {self.path.name} (see the TensorRT log above)")
        if on_device:
            self.synchronize()
            return {n: DeviceTensor(self, self._buffers[n][0], s, self.outputs[n].dtype) for n, s in shapes.items()}
        out = {n: self.to_host(self._buffers[n][0], s, self.outputs[n].dtype, sync=False) for n, s in shapes.items()}
        self.synchronize()
        del keep
        return out

    # --- helpers ---------------------------------------------------------------------------------

    def to_host(self, ptr: int, shape: tuple, dtype, *, sync: bool = True) -> np.ndarray:
        """A host copy of device memory (copied on this engine's stream)."""
        host = np.empty(shape, dtype)
        if host.nbytes:
            cuda_check(self._cudart, self._cudart.cudaMemcpyAsync(
                host.ctypes.data, ptr, host.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                self._stream), "copy to host")
        if sync:
            self.synchronize()
        return host

    def synchronize(self) -> None:
        cuda_check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the engine is collected)."""
        cudart = getattr(self, "_cudart", None)
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _check_names(self, manifest_io: dict) -> None:
        for kind, found in (("inputs", self.inputs), ("outputs", self.outputs)):
            listed = [e["name"] for e in manifest_io.get(kind, [])]
            if listed and sorted(listed) != sorted(found):
                raise SfedgeError(f"{self.path}: plan {kind} {sorted(found)} differ from the manifest's {sorted(listed)} "
                                  f"(a stale plan? rerun `sfedge build`)")

    def _max_shape(self, name: str) -> tuple:
        fixed = self.engine.get_tensor_shape(name)
        if all(d >= 0 for d in fixed):
            return tuple(fixed)
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # (min, opt, max)

    def _set_shape(self, name: str, shape: tuple) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            raise SfedgeError(f"{self.path.name}: {name} shape {tuple(shape)} is outside the plan's profile "
                              f"{tuple(lo)} .. {tuple(hi)}")

    def _output_shape(self, name: str) -> tuple:
        shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise SfedgeError(f"{self.path.name}: output {name} has a data-dependent shape {shape}, which "
                              f"TrtEngine does not support")
        return shape

    def _reserve(self, name: str, nbytes: int) -> None:
        """Make name's device buffer hold at least nbytes (allocated once; grown only if needed)."""
        ptr, size = self._buffers.get(name, (None, -1))
        if nbytes <= size:
            return
        if ptr is not None:
            cuda_check(self._cudart, self._cudart.cudaFree(ptr), "cudaFree")
        ptr = cuda_check(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes}) for {name}")
        self._buffers[name] = (ptr, nbytes)


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
