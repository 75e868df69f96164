"""The DICOM network edge: storage SCP, association policy, durable spool, C-STORE sender."""
