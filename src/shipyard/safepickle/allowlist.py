"""Which pickle globals may be resolved: default allowlist, torch extras, hard-deny list."""

from __future__ import annotations

import re
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING  # pickle's Python 2 -> 3 renames
from collections.abc import Iterable
from typing import Final

from shipyard.errors import UnsafePickleError, UsageError

JOBLIB_WRAPPER: Final = "joblib.numpy_pickle.NumpyArrayWrapper"
NUMPY_DTYPE: Final = "numpy.dtype"

_NUMPY_CORE = ("numpy.core", "numpy._core")


def _words(text: str) -> list[str]:
    return text.split()


_NUMPY_SCALARS = _words(
    "bool bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 intc uintc intp uintp byte "
    "ubyte short ushort longlong ulonglong float16 float32 float64 half single double "
    "longdouble complex64 complex128 csingle cdouble clongdouble object_ str_ bytes_ void "
    "datetime64 timedelta64 generic number integer signedinteger unsignedinteger floating "
    "complexfloating"
)
# numpy functions and ufuncs that scikit-learn stores as parameters (func=np.log1p, ...)
_NUMPY_FUNCS = _words(
    "abs absolute add amax amin arcsinh arctan argmax argmin average ceil clip cos cosh "
    "divide exp expm1 floor log log10 log1p log2 max maximum mean median min minimum multiply "
    "nanmax nanmean nanmedian nanmin nansum negative power prod reciprocal rint round sign "
    "sin sinh sqrt square std subtract sum tanh true_divide var"
)
_SCIPY_SPARSE = [
    f"scipy.sparse.{mod}{kind}.{kind}_{suffix}"
    for kind in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
    for mod in ("_", "")
    for suffix in ("matrix", "array")
]
_SKLEARN_EXPLICIT = [
    # private helpers and classes that fitted estimators really pickle (collected by pickling
    # every estimator in sklearn.utils.all_estimators and the usual meta-estimators)
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.cluster._birch._CFNode",
    "sklearn.cluster._birch._CFSubcluster",
    "sklearn.cluster._bisect_k_means._BisectingTree",
    "sklearn.cluster._kmeans._kmeans_single_elkan",
    "sklearn.cluster._kmeans._kmeans_single_lloyd",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.gaussian_process._gpc._BinaryGaussianProcessClassifierLaplace",
    "sklearn.metrics._dist_metrics.newObj",
    "sklearn.metrics._scorer._CurveScorer",
    "sklearn.metrics._scorer._PassthroughScorer",
    "sklearn.metrics._scorer._Scorer",
    "sklearn.multiclass._ConstantPredictor",
    "sklearn.neighbors._ball_tree.newObj",
    "sklearn.neighbors._kd_tree.newObj",
    "sklearn.feature_selection._mutual_info.mutual_info_classif",
    "sklearn.feature_selection._mutual_info.mutual_info_regression",
    *(
        f"sklearn.feature_selection._univariate_selection.{f}"
        for f in ("chi2", "f_classif", "f_oneway", "f_regression", "r_regression")
    ),
]
_TORCH_REBUILDERS = _words(
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor "
    "_rebuild_nested_tensor _rebuild_wrapper_subclass _rebuild_device_tensor_from_numpy "
    "_rebuild_device_tensor_from_cpu_tensor _rebuild_meta_tensor_no_storage"
)
_TORCH_DTYPES = _words(
    "bfloat16 bool complex128 complex32 complex64 float16 float32 float64 float8_e4m3fn "
    "float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 int8 int16 "
    "int32 int64 uint8 uint16 uint32 uint64 qint8 qint32 quint8 quint4x2 quint2x4 bits8 "
    "bits16 bits1x8 bits2x4 bits4x2 half float double long int short cfloat cdouble "
    "per_tensor_affine per_tensor_symmetric per_channel_affine per_channel_symmetric "
    "per_channel_affine_float_qparams strided sparse_coo sparse_csr"
)
_TORCH_STORAGES = _words(
    "BFloat16 Bool Byte Char ComplexDouble ComplexFloat Double Float Half Int Long QInt32 "
    "QInt8 QUInt2x4 QUInt4x2 QUInt8 Short"
)

DEFAULT_ALLOWLIST: Final[frozenset[str]] = frozenset(
    [
        *(f"{core}.multiarray._reconstruct" for core in _NUMPY_CORE),
        *(f"{core}.multiarray.scalar" for core in _NUMPY_CORE),
        *(f"{core}.numeric._frombuffer" for core in _NUMPY_CORE),
        "numpy.ndarray",
        NUMPY_DTYPE,
        "numpy.matrix",
        "numpy.matrixlib.defmatrix.matrix",
        "numpy.ma.MaskedArray",
        "numpy.ma.core.MaskedArray",
        "numpy.ma.core._mareconstruct",
        *(f"numpy.{name}" for name in _NUMPY_SCALARS + _NUMPY_FUNCS),
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random.mtrand.__randomstate_ctor",
        "numpy.random.mtrand.RandomState",
        "numpy.random._generator.Generator",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
        "copyreg._reconstructor",
        "_codecs.encode",
        *(
            f"builtins.{name}"
            for name in [
                "object",
                "set",
                "frozenset",
                "slice",
                "complex",
                "bytearray",
                "tuple",
                "list",
                "dict",
                "int",
                "float",
                "bool",
                "str",
                "bytes",
                "range",
            ]
        ),
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.Counter",
        "collections.deque",
        "datetime.datetime",
        "datetime.date",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        JOBLIB_WRAPPER,
        *_SCIPY_SPARSE,
        "scipy.interpolate._bsplines.BSpline",
        "scipy._lib.array_api_compat.numpy._aliases.asarray",
        *_SKLEARN_EXPLICIT,
    ]
)
"""Exact "module.qualname" globals a scikit-learn/numpy model may reference."""

TORCH_ALLOWLIST: Final[frozenset[str]] = frozenset(
    [
        *(f"torch._utils.{name}" for name in _TORCH_REBUILDERS),
        "torch._tensor._rebuild_from_type_v2",
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        *(f"torch.{name}" for name in _TORCH_DTYPES),
        *(f"torch.{kind}Storage" for kind in _TORCH_STORAGES),
        *(f"torch.{kind}Tensor" for kind in _TORCH_STORAGES),
        "collections.OrderedDict",
        "collections.Counter",
    ]
)
"""Extra globals allowed inside torch zip checkpoints (tensor and storage rebuilders)."""

# Callables that return an instance of the class passed as their first argument; the scanner
# needs this to know when a BUILD targets a joblib array wrapper.
FIRST_ARG_FACTORIES: Final[frozenset[str]] = frozenset(
    {
        "copyreg._reconstructor",
        "numpy.ma.core._mareconstruct",
        "numpy.random._pickle.__bit_generator_ctor",
        "sklearn.metrics._dist_metrics.newObj",
        "sklearn.neighbors._ball_tree.newObj",
        "sklearn.neighbors._kd_tree.newObj",
        *(f"{core}.multiarray._reconstruct" for core in _NUMPY_CORE),
    }
)

# Allowed as values (a subclass argument, joblib's wrapper attribute) but never as a callable.
NOT_CALLABLE: Final[dict[str, str]] = {
    "numpy.ndarray": (
        "numpy.ndarray called directly accepts a raw buffer, which can forge object pointers"
    ),
    "numpy.matrix": "numpy.matrix is only ever pickled as a value",
    "numpy.matrixlib.defmatrix.matrix": "numpy.matrix is only ever pickled as a value",
}

# Modules whose every global can run code, touch the OS or resolve further globals.
_DENY_MODULES: Final = frozenset(
    _words(
        "os posix nt posixpath ntpath subprocess _posixsubprocess sys pty tty ctypes _ctypes "
        "operator _operator functools _functools importlib imp zipimport pkgutil runpy code "
        "codeop pickle _pickle cPickle pickletools marshal types inspect gc shutil socket _socket "
        "ssl webbrowser http urllib urllib2 ftplib smtplib telnetlib xmlrpc asyncio "
        "multiprocessing concurrent threading _thread signal io _io tempfile glob site sysconfig "
        "distutils setuptools pip ensurepip venv bdb pdb trace timeit cProfile profile tkinter "
        "idlelib unittest doctest shlex platform commands popen2 _winapi msvcrt winreg mmap fcntl "
        "resource select selectors logging dill cloudpickle shelve dbm sqlite3 ast"
    )
)
_DENY_PREFIXES: Final = (
    "joblib.externals.",
    "joblib.numpy_pickle_compat.",  # joblib < 0.10 wrappers np.load an external path
    "joblib.memory.",
    "numpy.testing.",
    "numpy.f2py.",
    "numpy.distutils.",
    "numpy.ctypeslib.",
    "numpy.lib.npyio.",
    "numpy.lib.format.",
    "numpy.lib._npyio_impl.",
    "numpy.lib._datasource.",
    "sklearn.datasets.",
    "sklearn.externals.",
    "sklearn.experimental.",
    "sklearn.utils._testing.",
    "sklearn.utils.estimator_checks.",
    "sklearn.utils._joblib.",
    "sklearn.utils.parallel.",
    "sklearn.utils.fixes.",
    "sklearn.utils._show_versions.",
    "sklearn._build_utils.",
    "sklearn.conftest.",
    "torch.hub.",
    "torch.jit.",
    "torch.ops.",
    "torch._C.",
    "torch._dynamo.",
    "torch.utils.cpp_extension.",
    "torch.utils.data.",
    "torch.package.",
    "torch.serialization.load",
    "torch.load",
)
_DENY_NAMES: Final = frozenset(
    _words(
        "builtins.eval builtins.exec builtins.compile builtins.open builtins.getattr "
        "builtins.setattr builtins.delattr builtins.__import__ builtins.apply builtins.input "
        "builtins.breakpoint builtins.globals builtins.locals builtins.vars builtins.type "
        "builtins.memoryview builtins.super builtins.help builtins.exit builtins.quit "
        "builtins.execfile builtins.reload builtins.file numpy.load numpy.save numpy.savez "
        "numpy.savez_compressed numpy.savetxt numpy.loadtxt numpy.genfromtxt numpy.fromfile "
        "numpy.memmap numpy.DataSource numpy.fromregex joblib.load joblib.dump joblib.Memory "
        "joblib.numpy_pickle.load joblib.numpy_pickle.dump copyreg.__newobj__ "
        "copyreg.__newobj_ex__ copyreg.add_extension _codecs.decode codecs.open codecs.decode "
        "codecs.lookup"
    )
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SKLEARN_CLASS = re.compile(r"[A-Z][A-Za-z0-9_]*")
_CYTHON_UNPICKLE = re.compile(r"__pyx_unpickle_[A-Z][A-Za-z0-9_]*")


def compat_name(module: str, name: str) -> tuple[str, str]:
    """The (module, name) pickle really imports for a protocol 0-2 stream (Python 2 renames)."""
    if (module, name) in NAME_MAPPING:
        mapped: tuple[str, str] = NAME_MAPPING[(module, name)]
        return mapped
    return IMPORT_MAPPING.get(module, module), name


def _is_dunder(part: str) -> bool:
    return len(part) > 4 and part.startswith("__") and part.endswith("__")


def hard_deny_reason(module: str, name: str) -> str | None:
    """Why module.name can never be allowed, even on request, or None."""
    for mod, qual in dict.fromkeys([(module, name), compat_name(module, name)]):
        reason = _deny_one(mod, qual)
        if reason is not None:
            return reason
    return None


def _deny_one(module: str, name: str) -> str | None:
    full = f"{module}.{name}"
    root = module.split(".", 1)[0]
    # Python 2 module names such as __builtin__ are judged by what they map to
    module_parts = [] if module in IMPORT_MAPPING or module == "__main__" else module.split(".")
    if any(_is_dunder(part) for part in module_parts + name.split(".")):
        return f"{full} reaches a dunder attribute (interpreter internals)"
    if root in _DENY_MODULES or module in _DENY_MODULES:
        return f"{full} is in module {root!r}, which can run commands or code"
    if full in _DENY_NAMES:
        return f"{full} can run code, touch files or resolve other globals"
    if any(full.startswith(prefix) for prefix in _DENY_PREFIXES):
        return f"{full} can load code or files"
    return None


def _sklearn_rule(module: str, name: str) -> bool:
    """Public scikit-learn classes, Cython unpicklers and metric functions."""
    if not module.startswith("sklearn.") or "." in name:
        return False
    if any(part == "tests" for part in module.split(".")):
        return False
    if _SKLEARN_CLASS.fullmatch(name) or _CYTHON_UNPICKLE.fullmatch(name):
        return True
    in_metrics = module == "sklearn.metrics" or module.startswith("sklearn.metrics.")
    return in_metrics and "_plot" not in module and name[:1] != "_"


def _torch_rule(module: str, name: str) -> bool:
    """Storage classes under torch.cuda as saved from a GPU."""
    return module == "torch.cuda" and name.endswith("Storage") and name[:1].isupper()


def global_refusal(
    module: str, name: str, *, extra: frozenset[str], torch: bool = False
) -> str | None:
    """Why module.name is not allowed (None when it is)."""
    full = f"{module}.{name}"
    if not all(_IDENTIFIER.fullmatch(part) for part in module.split(".") + name.split(".")):
        return f"global {full!r} is not a dotted Python name"
    denied = hard_deny_reason(module, name)
    if denied is not None:
        return denied
    if full in DEFAULT_ALLOWLIST or full in extra:
        return None
    if torch and (full in TORCH_ALLOWLIST or _torch_rule(module, name)):
        return None
    if _sklearn_rule(module, name):
        return None
    return (
        f"global {full} is not on the allowlist; if it is your own reviewed class, "
        f"allow it with --allow-global {full}"
    )


def resolved_refusal(module: str, name: str, obj: object, *, extra: frozenset[str]) -> str | None:
    """Loader-side check: a global allowed only by a name rule must be defined where it claims."""
    full = f"{module}.{name}"
    if full in DEFAULT_ALLOWLIST or full in extra:
        return None
    if getattr(obj, "__module__", None) != module:
        return f"{full} is re-exported from {getattr(obj, '__module__', '?')}, not defined there"
    if name[:1].isupper() and not isinstance(obj, type):
        return f"{full} is not a class"
    return None


def normalize_extra_allowed(names: Iterable[str]) -> frozenset[str]:
    """Validate user-supplied "module.qualname" globals; hard-denied names are refused."""
    if isinstance(names, str):
        names = [names]
    out: set[str] = set()
    for raw in names:
        full = raw.strip()
        parts = full.split(".")
        if len(parts) < 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
            raise UsageError(
                f"--allow-global {raw!r}: expected an exact 'module.QualName' such as "
                "'mypackage.models.MyEstimator' (no wildcards)"
            )
        for cut in range(1, len(parts)):
            module, name = ".".join(parts[:cut]), ".".join(parts[cut:])
            reason = hard_deny_reason(module, name)
            if reason is not None:
                raise UnsafePickleError(
                    f"refusing to allow {full}: {reason}; this global is on the hard-deny "
                    "list and cannot be allowed even with --allow-global"
                )
        out.add(full)
    return frozenset(out)
