"""Tests for jetstore.errors: numbers, names, registry, describe(), pickling, OSError mapping."""

from __future__ import annotations

import errno
import pickle
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstore import errors
from jetstore.errors import (
    CATEGORIES,
    ERRORS_BY_CODE,
    ERRORS_BY_NAME,
    CheckpointDepthTooDeep,
    ColumnNotFound,
    CorruptionError,
    DatabaseDirtyShutdown,
    DataError,
    DiskFull,
    DiskIO,
    ErrorInfo,
    FileAccessDenied,
    FileAlreadyExists,
    FileNotFound,
    InconsistentError,
    IntegrityError,
    InvalidParameter,
    InvalidPath,
    IOFailure,
    JetError,
    KeyDuplicate,
    MissingLogFile,
    NoCurrentRecord,
    OperationalError,
    OutOfFileHandles,
    OutOfMemory,
    ProgrammingError,
    ReadVerifyFailure,
    RecordNotFound,
    RequiredLogFilesMissing,
    ResourceError,
    StateError,
    TransientError,
    UsageError,
    WriteConflict,
    describe,
    error_class,
    from_os_error,
    normalize_code,
)

CATEGORY_CLASSES = {
    JetError,
    TransientError,
    OperationalError,
    IOFailure,
    ResourceError,
    DataError,
    CorruptionError,
    InconsistentError,
    IntegrityError,
    ProgrammingError,
    UsageError,
    StateError,
}


def all_subclasses(cls: type[JetError]) -> set[type[JetError]]:
    found: set[type[JetError]] = set()
    stack = [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


CONCRETE = sorted(all_subclasses(JetError) - CATEGORY_CLASSES, key=lambda c: c.code)


# --- numbers and names --------------------------------------------------------------------


def test_every_concrete_class_is_registered() -> None:
    assert CONCRETE, "no error classes found"
    assert set(CONCRETE) == set(ERRORS_BY_CODE.values())
    for cls in CONCRETE:
        assert ERRORS_BY_CODE[cls.code] is cls
        assert ERRORS_BY_NAME[cls.name] is cls


def test_codes_are_unique_and_negative() -> None:
    counts = Counter(cls.code for cls in CONCRETE)
    duplicates = {code: n for code, n in counts.items() if n > 1}
    assert duplicates == {}
    assert all(cls.code < 0 for cls in CONCRETE)
    assert len(ERRORS_BY_CODE) == len(CONCRETE)


def test_names_are_ese_names() -> None:
    for cls in CONCRETE:
        assert cls.name == cls.__name__
        assert cls.ese_name == "JET_err" + cls.name
    assert len({cls.name for cls in CONCRETE}) == len(CONCRETE)


def test_every_class_has_description_hint_and_category() -> None:
    for cls in CONCRETE:
        assert cls.description.strip(), cls
        assert cls.hint.strip(), cls
        assert cls.category in CATEGORIES, cls


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (FileNotFound, -1811),
        (MissingLogFile, -528),
        (RequiredLogFilesMissing, -543),
        (DatabaseDirtyShutdown, -550),
        (CheckpointDepthTooDeep, -614),
        (ReadVerifyFailure, -1018),
        (FileAccessDenied, -1032),
        (WriteConflict, -1102),
        (RecordNotFound, -1601),
        (NoCurrentRecord, -1603),
        (ColumnNotFound, -1507),
        (KeyDuplicate, -1605),
        (DiskFull, -1808),
        (InvalidParameter, -1003),
        (errors.KeyTooBig, -408),
        (errors.KeyTruncated, -346),
        (errors.TransReadOnly, -1110),
        (errors.InternalError, -107),
        (errors.NotInitialized, -1029),
        (errors.TermInProgress, -1000),
    ],
)
def test_known_numbers_match_ese(cls: type[JetError], code: int) -> None:
    assert cls.code == code
    assert error_class(code) is cls


def test_hints_name_the_operator_commands() -> None:
    assert "jetstore logs verify" in FileNotFound.hint
    assert "backup" in FileNotFound.hint
    for cls in (MissingLogFile, RequiredLogFilesMissing):
        assert "jetstore logs verify" in cls.hint
        assert "backup" in cls.hint
        assert "jetstore recover --accept-data-loss" in cls.hint
    assert "jetstore recover DIR" in DatabaseDirtyShutdown.hint
    assert "edb.chk" in CheckpointDepthTooDeep.hint
    assert "log volume" in errors.LogDiskFull.hint


# --- hierarchy ----------------------------------------------------------------------------


def test_hierarchy_and_builtin_mixins() -> None:
    assert issubclass(IOFailure, OperationalError)
    assert issubclass(ResourceError, OperationalError)
    assert issubclass(CorruptionError, DataError)
    assert issubclass(InconsistentError, DataError)
    assert issubclass(UsageError, ProgrammingError)
    assert issubclass(StateError, ProgrammingError)
    assert issubclass(FileNotFound, IOFailure)
    assert issubclass(ReadVerifyFailure, CorruptionError)
    assert issubclass(DatabaseDirtyShutdown, InconsistentError)
    assert issubclass(KeyDuplicate, IntegrityError)
    assert issubclass(InvalidParameter, ValueError)
    assert issubclass(InvalidParameter, UsageError)
    assert issubclass(WriteConflict, TransientError)
    assert WriteConflict.retryable
    assert not FileNotFound.retryable
    assert errors.Error is JetError
    assert errors.DatabaseError is JetError


def test_record_not_found_is_a_key_error_with_engine_str() -> None:
    err = RecordNotFound("key b'k1' in table 'users'")
    assert isinstance(err, KeyError)
    assert isinstance(err, JetError)
    with pytest.raises(KeyError):
        raise err
    text = str(err)
    assert text.startswith("JET_errRecordNotFound (-1601): key b'k1' in table 'users'. ")
    assert not text.startswith('"') and not text.startswith("'")


# --- str() and attributes -----------------------------------------------------------------


def test_str_format() -> None:
    err = FileNotFound("checkpoint file '/data/edb.chk' is missing", path="/data/edb.chk")
    assert str(err) == (
        "JET_errFileNotFound (-1811): checkpoint file '/data/edb.chk' is missing. "
        f"What to do: {FileNotFound.hint}"
    )
    assert err.path == "/data/edb.chk"
    assert err.detail == "checkpoint file '/data/edb.chk' is missing"
    assert err.errno is None


def test_str_omits_empty_parts() -> None:
    # No detail: the description stands in for it.
    assert str(FileNotFound(hint="")) == (
        f"JET_errFileNotFound (-1811): {FileNotFound.description}"
    )
    # A trailing period in the detail is not doubled.
    assert str(DiskFull("volume /data is full.", hint="free space")) == (
        "JET_errDiskFull (-1808): volume /data is full. What to do: free space"
    )


def test_instance_hint_overrides_class_hint() -> None:
    err = ReadVerifyFailure("page 7 of '/d/main.edb'", hint="restore page 7 from the replica")
    assert err.hint == "restore page 7 from the replica"
    assert ReadVerifyFailure.hint != err.hint
    assert str(err).endswith("What to do: restore page 7 from the replica")
    assert ReadVerifyFailure("page 7").hint == ReadVerifyFailure.hint


def test_as_dict() -> None:
    data = FileNotFound("x", path="/p").as_dict()
    assert data["code"] == -1811
    assert data["ese_name"] == "JET_errFileNotFound"
    assert data["category"] == "io"
    assert data["path"] == "/p"


# --- pickling -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.__name__)
def test_pickle_round_trip_every_class(cls: type[JetError]) -> None:
    err = cls("detail for " + cls.name, path="/data/x", hint="do this")
    err.errno = 5
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.detail == err.detail
    assert back.path == "/data/x"
    assert back.hint == "do this"
    assert back.errno == 5
    assert str(back) == str(err)
    assert back.args == err.args


def test_pickle_keeps_class_hint_when_not_overridden() -> None:
    back = pickle.loads(pickle.dumps(RecordNotFound("k")))
    assert isinstance(back, RecordNotFound)
    assert isinstance(back, KeyError)
    assert back.hint == RecordNotFound.hint
    assert back.path is None


# --- describe() and normalize_code() ------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        -1811,
        4294965485,
        "0xfffff8ed",
        "0xFFFFF8ED",
        "0XFFFFF8ED",
        "-1811",
        "4294965485",
        " -1811 ",
        "JET_errFileNotFound",
        "FileNotFound",
        "jet_errfilenotfound",
        "FILENOTFOUND",
    ],
)
def test_all_forms_of_1811_describe_file_not_found(form: int | str) -> None:
    info = describe(form)
    assert info == ErrorInfo(
        code=-1811,
        name="FileNotFound",
        ese_name="JET_errFileNotFound",
        description=FileNotFound.description,
        hint=FileNotFound.hint,
        category="io",
        signed=-1811,
        unsigned=4294965485,
        hex="0xfffff8ed",
    )


def test_error_info_is_frozen() -> None:
    info = describe(-1811)
    with pytest.raises(AttributeError):
        info.code = 1  # type: ignore[misc]


def test_normalize_code() -> None:
    assert normalize_code(-1811) == -1811
    assert normalize_code(0xFFFFF8ED) == -1811
    assert normalize_code("0xfffff8ed") == -1811
    assert normalize_code("-0x713") == -1811
    assert normalize_code("MissingLogFile") == -528
    assert normalize_code(5) == 5
    for bad in (1 << 32, -(1 << 31) - 1, "nonsense", "", True, 1.5):
        with pytest.raises(InvalidParameter):
            normalize_code(bad)  # type: ignore[arg-type]


def test_unknown_code_raises_invalid_parameter_with_all_forms() -> None:
    with pytest.raises(InvalidParameter) as caught:
        describe(-9999)
    message = str(caught.value)
    assert "-9999" in message
    assert "4294957297" in message
    assert "0xffffd8f1" in message
    assert isinstance(caught.value, ValueError)


def test_unknown_unsigned_code_reports_normalized_forms() -> None:
    with pytest.raises(InvalidParameter) as caught:
        describe("0xffffd8f1")
    assert "-9999" in str(caught.value)


def test_positive_code_suggests_the_negative_one() -> None:
    with pytest.raises(InvalidParameter, match="did you mean -1811"):
        describe(1811)


def test_unknown_name() -> None:
    with pytest.raises(InvalidParameter, match="JET_errNoSuchThing"):
        describe("JET_errNoSuchThing")


def test_error_class() -> None:
    assert error_class(-1811) is FileNotFound
    assert error_class(4294965485) is FileNotFound
    assert error_class(-9999) is None
    assert error_class(1 << 40) is None


@given(st.sampled_from(sorted(ERRORS_BY_CODE)))
def test_describe_agrees_on_all_three_forms(code: int) -> None:
    unsigned = code & 0xFFFFFFFF
    by_signed = describe(code)
    assert by_signed == describe(unsigned)
    assert by_signed == describe(f"0x{unsigned:08x}")
    assert by_signed == describe(f"0x{unsigned:08X}")
    assert by_signed == describe(str(code))
    assert by_signed.code == code
    assert by_signed.unsigned == unsigned
    assert by_signed.hex == f"0x{unsigned:08x}"
    assert describe(by_signed.ese_name) == by_signed


# --- from_os_error ------------------------------------------------------------------------


def _errno(name: str) -> int:
    value = getattr(errno, name, None)
    if value is None:
        pytest.skip(f"errno.{name} does not exist on this platform")
    assert isinstance(value, int)
    return value


@pytest.mark.parametrize(
    ("errno_name", "expected"),
    [
        ("ENOENT", FileNotFound),
        ("EACCES", FileAccessDenied),
        ("EPERM", FileAccessDenied),
        ("EROFS", FileAccessDenied),
        ("ETXTBSY", FileAccessDenied),
        ("EBUSY", FileAccessDenied),
        ("ENOSPC", DiskFull),
        ("EDQUOT", DiskFull),
        ("EFBIG", DiskFull),
        ("EMFILE", OutOfFileHandles),
        ("ENFILE", OutOfFileHandles),
        ("ENOTDIR", InvalidPath),
        ("ENAMETOOLONG", InvalidPath),
        ("EISDIR", InvalidPath),
        ("EEXIST", FileAlreadyExists),
        ("ELOOP", InvalidPath),
        ("EXDEV", InvalidPath),
        ("ENOMEM", OutOfMemory),
        ("EIO", DiskIO),
        ("EINVAL", DiskIO),
    ],
)
def test_from_os_error_maps_errno(errno_name: str, expected: type[JetError]) -> None:
    number = _errno(errno_name)
    os_err = OSError(number, "some OS message", "/x/edb.log")
    err = from_os_error(os_err, op="write", path="/x/edb.log")
    assert type(err) is expected
    assert err.__cause__ is os_err
    assert err.errno == number
    assert err.path == "/x/edb.log"
    os_message = f"[Errno {number}] some OS message"
    if expected in (InvalidPath, FileAlreadyExists):
        # A path error says what is wrong with the path, then what the OS said.
        assert err.detail.endswith(f"(write failed: {os_message})")
        assert "/x/edb.log" in err.detail and err.hint != InvalidPath.hint
    else:
        assert err.detail == f"write failed on '/x/edb.log': {os_message}"


@pytest.mark.parametrize(
    ("errno_name", "op", "says"),
    [
        ("EISDIR", "create", "'/x/edbtmp.log' is a directory, where the engine keeps a file"),
        ("EEXIST", "create directory", "'/x/edbtmp.log' is a file, where the engine needs a"),
        ("EEXIST", "create", "'/x/edbtmp.log' already exists"),
        ("ENOTDIR", "create", "a parent of '/x/edbtmp.log' is a file, not a directory"),
        ("ENAMETOOLONG", "create", "is too long for the file system"),
        ("ELOOP", "create", "loop of symbolic links"),
        ("EXDEV", "rename", "a rename cannot move a file between file systems"),
    ],
)
def test_from_os_error_path_errors_say_what_is_wrong(errno_name: str, op: str, says: str) -> None:
    number = _errno(errno_name)
    err = from_os_error(OSError(number, "msg"), op=op, path="/x/edbtmp.log")
    assert type(err) is (FileAlreadyExists if says.endswith("already exists") else InvalidPath)
    assert says in err.detail
    # Never the disk-hardware advice of DiskIO.
    assert "SMART" not in str(err) and "cabling" not in str(err)


def test_from_os_error_path_errors_without_errno() -> None:
    err = from_os_error(IsADirectoryError("x"), op="open", path="/x/main.edb")
    assert type(err) is InvalidPath and "is a directory" in err.detail
    err = from_os_error(FileExistsError("x"), op="create", path="/x/main.edb")
    assert type(err) is FileAlreadyExists and "already exists" in err.detail
    assert err.code == -1814 and err.hint != FileAlreadyExists.hint


def test_from_os_error_real_exception_and_raise_from(tmp_path: Path) -> None:
    missing = f"{tmp_path}/no-such-file.edb"
    with pytest.raises(FileNotFound) as caught:
        try:
            open(missing, "rb").close()
        except OSError as exc:
            raise from_os_error(exc, op="open", path=missing) from exc
    err = caught.value
    assert isinstance(err.__cause__, FileNotFoundError)
    assert err.errno == errno.ENOENT
    assert str(err).startswith(
        f"JET_errFileNotFound (-1811): open failed on {missing!r}: [Errno 2] "
    )


def test_from_os_error_eio_message() -> None:
    os_err = OSError(errno.EIO, "Input/output error")
    err = from_os_error(os_err, op="write", path="/x/edb.log")
    assert isinstance(err, DiskIO)
    assert err.detail == "write failed on '/x/edb.log': [Errno 5] Input/output error"
    assert str(err).startswith(
        "JET_errDiskIO (-1022): write failed on '/x/edb.log': [Errno 5] Input/output error. "
    )


def test_from_os_error_without_errno_uses_exception_type() -> None:
    err = from_os_error(PermissionError("locked"), op="open", path="/x/edb.chk")
    assert isinstance(err, FileAccessDenied)
    assert err.errno is None
    assert "locked" in err.detail
    assert isinstance(from_os_error(OSError("odd"), op="read", path="/p"), DiskIO)


def test_from_os_error_result_pickles() -> None:
    err = from_os_error(OSError(errno.ENOSPC, "No space left on device"), op="extend", path="/d")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, DiskFull)
    assert back.errno == errno.ENOSPC
    assert back.detail == err.detail


# --- registry guards ----------------------------------------------------------------------


def test_duplicate_code_is_rejected_at_class_creation() -> None:
    with pytest.raises(TypeError, match="already used"):

        class FileNotFoundAgain(IOFailure):
            description = "dup"
            hint = "dup"
            code = -1811

    assert ERRORS_BY_CODE[-1811] is FileNotFound


def test_subclass_of_concrete_error_keeps_identity_and_is_not_registered() -> None:
    class SpecificFileNotFound(FileNotFound):
        pass

    assert SpecificFileNotFound.code == -1811
    assert SpecificFileNotFound.ese_name == "JET_errFileNotFound"
    assert ERRORS_BY_CODE[-1811] is FileNotFound


def test_brief_is_the_message_without_what_to_do() -> None:
    from jetstore.errors import FileNotFound

    error = FileNotFound("'x.edb' is gone.", hint="Put it back.")
    assert error.brief() == "JET_errFileNotFound (-1811): 'x.edb' is gone"
    assert str(error) == f"{error.brief()}. What to do: Put it back."
