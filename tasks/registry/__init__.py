"""The registry: registering a version behind the gate, registered versions as commands name them, aliases."""
