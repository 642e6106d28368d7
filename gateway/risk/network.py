"""What the gateway knows about a client IP: region, ASN, place, hosting range, blocklists.

Sources, all loaded once at startup (a reload is a restart, like the rest of the
configuration):

* a CIDR table (CSV: ``cidr,region,asn,lat,lon``; empty fields allowed) the
  broker maintains for its own market (e.g. mobile carriers by province);
* optionally a MaxMind-format database (GeoLite2/GeoIP2 City or ASN, or any
  MMDB with ``country``/``location``/``autonomous_system_number`` records), read
  with the maintained ``maxminddb`` library; the CIDR table wins where both
  answer, so a broker can correct the database for its own ranges;
* hosting / data-centre ranges and named blocklists (e.g. Tor exit nodes), as
  files of one CIDR or address per line (``#`` comments).

Lookups are longest-prefix matches over per-length hash tables (a handful of
dictionary probes, whatever the table size), memoised per address.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

V = TypeVar("V")
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkDataError(ValueError):
    """A CIDR table, list or database that cannot be read (names the file and line)."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where an address is, as far as the tables know (None: unknown)."""

    region: str | None = None
    asn: int | None = None
    lat: float | None = None
    lon: float | None = None
    hosting: bool = False
    blocklist: str | None = None
    """The name of the first blocklist that holds the address."""


UNKNOWN = Place()


class PrefixTable(Generic[V]):
    """Longest-prefix match of addresses against CIDR entries (IPv4 and IPv6)."""

    def __init__(self, entries: Iterable[tuple[_Net, V]] = ()) -> None:
        self._v4: dict[int, dict[int, V]] = {}
        self._v6: dict[int, dict[int, V]] = {}
        for net, value in entries:
            self.add(net, value)

    def add(self, net: _Net, value: V) -> None:
        tables = self._v4 if net.version == 4 else self._v6
        tables.setdefault(net.prefixlen, {})[int(net.network_address)] = value
        # Longest prefixes first, so the first hit is the most specific entry.
        ordered = dict(sorted(tables.items(), reverse=True))
        tables.clear()
        tables.update(ordered)

    def __len__(self) -> int:
        return sum(len(t) for t in self._v4.values()) + sum(len(t) for t in self._v6.values())

    def match(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> V | None:
        value = int(address)
        tables, bits = (self._v4, 32) if address.version == 4 else (self._v6, 128)
        for length, table in tables.items():
            hit = table.get((value >> (bits - length)) << (bits - length))
            if hit is not None:
                return hit
        return None


def _network(text: str, where: str) -> _Net:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise NetworkDataError(f"{where}: {text.strip()!r} is not an address or CIDR") from None


def read_cidr_list(path: Path) -> list[_Net]:
    """One CIDR or address per line; blank lines and ``#`` comments are skipped."""
    nets = []
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise NetworkDataError(f"{path}: cannot read ({exc.strerror})") from None
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            nets.append(_network(text, f"{path}:{n}"))
    return nets


def read_region_table(path: Path) -> list[tuple[_Net, Place]]:
    """CSV rows ``cidr,region,asn,lat,lon`` (header optional, empty fields allowed)."""
    rows: list[tuple[_Net, Place]] = []
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise NetworkDataError(f"{path}: cannot read ({exc.strerror})") from None
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or row[0].strip().startswith("#") or row[0].strip().lower() == "cidr":
            continue
        where = f"{path}:{n}"
        cells = [c.strip() for c in row] + [""] * (5 - len(row))
        try:
            asn = int(cells[2]) if cells[2] else None
            lat = float(cells[3]) if cells[3] else None
            lon = float(cells[4]) if cells[4] else None
        except ValueError:
            raise NetworkDataError(f"{where}: asn must be an integer, lat/lon numbers") from None
        if (lat is None) != (lon is None):
            raise NetworkDataError(f"{where}: lat and lon must be given together")
        if lat is not None and lon is not None and not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise NetworkDataError(f"{where}: lat must be within -90..90 and lon within -180..180")
        rows.append((_network(cells[0], where), Place(region=cells[1] or None, asn=asn, lat=lat, lon=lon)))
    return rows


class NetworkIntel:
    """Answers `lookup(ip)` from the tables and the optional MaxMind-format database."""

    def __init__(self, *, regions: Sequence[tuple[_Net, Place]] = (), hosting: Sequence[_Net] = (),
                 blocklists: Mapping[str, Sequence[_Net]] | None = None, mmdb: Path | None = None,
                 cache_size: int = 65_536) -> None:
        self._regions: PrefixTable[Place] = PrefixTable(regions)
        self._hosting: PrefixTable[bool] = PrefixTable((n, True) for n in hosting)
        self._blocklists: list[tuple[str, PrefixTable[bool]]] = [
            (name, PrefixTable((n, True) for n in nets)) for name, nets in (blocklists or {}).items()]
        self._reader: Any = None
        if mmdb is not None:
            import maxminddb  # only deployments that configure a database need it

            try:
                self._reader = maxminddb.open_database(str(mmdb))
            except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
                raise NetworkDataError(f"{mmdb}: not a readable MaxMind-format database ({exc})") from None
        self.lookup = functools.lru_cache(maxsize=cache_size)(self._lookup)

    @classmethod
    def from_files(cls, *, regions_file: Path | None = None, hosting_files: Sequence[Path] = (),
                   blocklist_files: Mapping[str, Path] | None = None,
                   mmdb_file: Path | None = None) -> NetworkIntel:
        hosting: list[_Net] = []
        for f in hosting_files:
            hosting.extend(read_cidr_list(f))
        return cls(regions=read_region_table(regions_file) if regions_file else (), hosting=hosting,
                   blocklists={name: read_cidr_list(p) for name, p in (blocklist_files or {}).items()},
                   mmdb=mmdb_file)

    def _lookup(self, ip: str) -> Place:
        address = _address(ip)
        if address is None:
            return UNKNOWN
        place = self._regions.match(address)
        if place is None and self._reader is not None:
            place = _from_mmdb(self._reader.get(str(address)))
        hosting = self._hosting.match(address) is not None
        blocked = next((name for name, table in self._blocklists if table.match(address)), None)
        if place is None:
            return Place(hosting=hosting, blocklist=blocked) if hosting or blocked else UNKNOWN
        if hosting or blocked:
            return Place(place.region, place.asn, place.lat, place.lon, hosting, blocked)
        return place

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def _from_mmdb(record: Any) -> Place | None:
    """Region (``CC`` or ``CC-SUB``), ASN and location from a GeoIP2/GeoLite2-shaped record."""
    if not isinstance(record, dict):
        return None
    def table(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    country = table(record.get("country")).get("iso_code")
    subs = record.get("subdivisions")
    sub = table(subs[0]).get("iso_code") if isinstance(subs, list) and subs else None
    region = f"{country}-{sub}" if country and sub else country
    loc = table(record.get("location"))
    lat, lon = loc.get("latitude"), loc.get("longitude")
    asn = record.get("autonomous_system_number")
    if not (isinstance(lat, (int, float)) and isinstance(lon, (int, float))):
        lat = lon = None
    return Place(region=region if isinstance(region, str) else None,
                 asn=asn if isinstance(asn, int) else None, lat=lat, lon=lon)


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The parsed address (an IPv4-mapped IPv6 address as its IPv4 address), or None."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=65_536)
def prefix_of(ip: str) -> str | None:
    """The address's /24 (IPv4) or /48 (IPv6) network, the unit of "a new network for this customer"."""
    address = _address(ip)
    if address is None:
        return None
    length = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network((address, length), strict=False))
