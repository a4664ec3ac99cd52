"""The configuration and modeling files a nemotron-nas export copies into its folder (`auto_map`).

They import only torch and transformers: the exported folder loads where finercut-tui is not installed.
"""
