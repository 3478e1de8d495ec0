"""The formats that ship with tidings, one module or package per system.

``native`` (tidings' own: CloudEvents binary and structured mode), ``cki`` (the CKI
DataWarehouse), ``fedora`` (fedora-messaging and fedmsg, with the bridge between them),
``bugzilla`` (Bugzilla Push), ``lava`` (LAVA's event stream) and ``taskcluster`` (the
Taskcluster queue's exchanges). The protocol they implement and how they are found is
:mod:`tidings.format`; ``docs/systems/`` has a page per system.
"""
