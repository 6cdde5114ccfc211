"""Store DICOM files into a PACS: C-ECHO first, C-FIND for what it already holds, C-STORE for the rest (pynetdicom).

Every failure is one `EndofuseError` line naming the node or the object; the files stay where they are, so running
the same command again sends only what is still missing.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from endofuse.errors import EndofuseError, InvalidOptionError

STATUS_SUCCESS = 0x0000
STATUS_PENDING = (0xFF00, 0xFF01)
FAILED_SEND = "nothing else was sent; the files are kept in place: run the same command again to send the rest"


class PacsError(EndofuseError):
    """The PACS could not be reached, refused us, or refused an object."""


def parse_node(spec: str) -> tuple[str, int]:
    """`--send HOST:PORT` -> (host, port)."""
    host, _, port = str(spec).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidOptionError(f"--send must be HOST:PORT (e.g. pacs.hospital:104), got {spec!r}")
    return host, int(port)


def _check_aet(value: str, flag: str) -> str:
    if not 0 < len(value) <= 16 or not value.isascii() or "\\" in value or value.strip() != value:
        raise InvalidOptionError(f"{flag} must be 1-16 ASCII characters without backslash or edge spaces, "
                                 f"got {value!r}")
    return value


def _associate(node: tuple[str, int], aet: str, called_aet: str, timeout: float, contexts: list):
    from pynetdicom import AE

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own log lines would double our one line
    ae = AE(ae_title=_check_aet(aet, "--aet"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    host, port = node
    assoc = ae.associate(host, port, ae_title=_check_aet(called_aet, "--called-aet"))
    if assoc.is_established:
        return assoc
    where = f"PACS {called_aet}@{host}:{port}"
    if assoc.is_rejected or _listening(host, port, timeout):  # a rejection can arrive as an abort (closed socket)
        raise PacsError(f"{where} refused the association from AE title {aet!r}: check --aet/--called-aet and that "
                        f"the PACS lists {aet!r} as a known modality at this host")
    raise PacsError(f"{where} cannot be reached (no DICOM association within {timeout:g} s): check host, port and "
                    "that the PACS is running")


def _listening(host: str, port: int, timeout: float) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=min(timeout, 3.0)):
            return True
    except OSError:
        return False


def _status(response) -> int | None:
    return None if response is None or "Status" not in response else int(response.Status)


def _stored_uids(assoc, datasets: list) -> set[str] | None:
    """SOP Instance UIDs the PACS already has of these series (C-FIND, image level); None when it cannot say."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    if not any(c.abstract_syntax == FIND and c.result == 0 for c in assoc.accepted_contexts):
        return None
    stored: set[str] = set()
    for study, series in sorted({(ds.StudyInstanceUID, ds.SeriesInstanceUID) for ds in datasets}):
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study, series, ""
        for status, identifier in assoc.send_c_find(query, FIND):
            code = _status(status)
            if code is None or (code not in STATUS_PENDING and code != STATUS_SUCCESS):
                return None  # the PACS cannot answer: send everything (a PACS ignores a duplicate or replaces it)
            if code in STATUS_PENDING and identifier is not None and "SOPInstanceUID" in identifier:
                stored.add(str(identifier.SOPInstanceUID))
    return stored


def send_files(paths: Sequence[str | os.PathLike], node: tuple[str, int], aet: str, called_aet: str,
               timeout: float = 10.0) -> tuple[int, int]:
    """C-ECHO, then C-STORE each file the PACS does not already hold; (stored, skipped)."""
    from pydicom import dcmread
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

    datasets = [(Path(p), dcmread(p, stop_before_pixels=True)) for p in paths]
    contexts = [(Verification, None), (StudyRootQueryRetrieveInformationModelFind, None)]
    for pair in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}):
        contexts.append((pair[0], [pair[1]]))
    assoc = _associate(node, aet, called_aet, timeout, contexts)
    host, port = node
    try:
        if _status(assoc.send_c_echo()) != STATUS_SUCCESS:
            raise PacsError(f"PACS {called_aet}@{host}:{port} did not answer C-ECHO: {FAILED_SEND}")
        stored = _stored_uids(assoc, [ds for _, ds in datasets]) or set()
        sent = skipped = 0
        for path, header in datasets:
            if str(header.SOPInstanceUID) in stored:
                skipped += 1
                continue
            accepted = any(c.abstract_syntax == header.SOPClassUID and c.result == 0 for c in assoc.accepted_contexts)
            if not accepted:
                raise PacsError(f"'{path}': the PACS does not accept {header.SOPClassUID.name} in "
                                f"{header.file_meta.TransferSyntaxUID.name}; {sent} stored before it, {FAILED_SEND}")
            code = _status(assoc.send_c_store(dcmread(path)))
            if code is None:
                raise PacsError(f"'{path}': the PACS closed the connection during C-STORE; {sent} stored before it, "
                                f"{FAILED_SEND}")
            if code != STATUS_SUCCESS and not 0xB000 <= code <= 0xBFFF:  # Bxxx: stored with a warning
                raise PacsError(f"'{path}': the PACS refused C-STORE (status 0x{code:04X}); {sent} stored before "
                                f"it, {FAILED_SEND}")
            sent += 1
        return sent, skipped
    finally:
        assoc.release()
