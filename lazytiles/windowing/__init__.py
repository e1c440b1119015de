"""windowing"""
